"""LDDMM kernel and scaling and squaring (thesis §3.3.1): exact against direct computations."""
import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.image import Grid
from DeepRegistrationLib.core.jacobian import jacobian_determinant, jacobian_statistics
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.scaling_and_squaring import compose, exponential, squarings
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.model_input import mm_per_voxel

torch.set_num_threads(1)


def _smooth_momentum(shape, amplitude, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(1, 3, *shape, generator=g, dtype=torch.float64)
    return m * amplitude


def test_defaults_are_the_thesis_values():
    assert (lddmm.ALPHA, lddmm.GAMMA, lddmm.PADDING, lddmm.STEPS) == (20.0, 1.0, 12, 7)


def test_zero_momentum_gives_the_identity():
    m = torch.zeros(1, 3, 12, 14, 16)
    v = lddmm.smooth(m, (1.0, 1.0, 1.0))
    u, u_inv = lddmm.forward_and_inverse(lddmm.velocity_to_voxels(v, (1.0, 1.0, 1.0)))
    assert float(u.abs().max()) == 0.0 and float(u_inv.abs().max()) == 0.0


def test_kernel_spectrum_is_the_inverse_square_of_the_discrete_operator():
    """K v = L(L v) with the 7-point stencil of L = α∇² + γ Id (cyclic on the padded grid) gives back m."""
    shape, spacing, alpha, gamma = (10, 12, 14), (2.0, 1.0, 1.5), 20.0, 1.0
    m = _smooth_momentum(shape, 1.0)[0, 0]
    spectrum = lddmm.kernel_spectrum(shape, spacing, alpha, gamma, torch.float64)
    v = torch.fft.irfftn(torch.fft.rfftn(m) * spectrum, s=shape)

    def operator(x):  # the thesis' L(0) = 2α/Δx² + γ, L(±1) = −α/Δx², per axis
        out = gamma * x
        for axis, dx in enumerate(spacing):
            out = out + alpha / dx ** 2 * (2 * x - torch.roll(x, 1, axis) - torch.roll(x, -1, axis))
        return out

    assert torch.allclose(operator(operator(v)), m, atol=1e-9)
    assert float(spectrum[0, 0, 0]) == pytest.approx(1.0 / gamma ** 2)


def test_fft_smoothing_equals_direct_convolution_with_zero_padding():
    shape, spacing, padding = (5, 6, 7), (1.0, 2.0, 1.5), 4
    m = _smooth_momentum(shape, 1.0, seed=3).float()
    v = lddmm.smooth(m, spacing, padding=padding)[0].double().numpy()
    padded = lddmm.padded_shape(shape, padding)
    assert padded == (15, 15, 15)                       # 13, 14, 15 rounded up to FFT lengths
    kernel = np.fft.irfftn(lddmm.kernel_spectrum(padded, spacing, dtype=torch.float64).numpy(), s=padded, axes=(0, 1, 2))
    src = np.argwhere(np.ones(shape, bool))
    direct = np.zeros((3, *shape))
    for x in src:
        offsets = (x[None] - src) % np.asarray(padded)   # the kernel is periodic on the padded grid
        weights = kernel[offsets[:, 0], offsets[:, 1], offsets[:, 2]]
        direct[(slice(None), *x)] = m[0].double().numpy().reshape(3, -1) @ weights
    np.testing.assert_allclose(v, direct, rtol=1e-4, atol=1e-6)


def test_fft_lengths_have_only_small_prime_factors():
    assert [lddmm.fft_length(n) for n in (72, 119, 123, 141, 536)] == [72, 120, 125, 144, 540]
    assert lddmm.padded_shape((95, 117, 99), 12) == (120, 144, 125)


def _velocity(shape, spacing, peak_mm, seed=1):
    m = _smooth_momentum(shape, 1.0, seed).float()
    v = lddmm.smooth(m, spacing)
    return lddmm.velocity_to_voxels(v * (peak_mm / float(v.abs().max())), spacing)


def _field_mm(u_vox, spacing_zyx):
    spacing_xyz = np.asarray(list(reversed(spacing_zyx)))
    grid = Grid(tuple(reversed(u_vox.shape[2:])), spacing_xyz, np.zeros(3))
    return DisplacementField(u_vox[0].movedim(0, -1).numpy() * spacing_xyz.astype(np.float32), grid)


def test_inverse_consistency_residual_in_mm(capsys):
    shape, spacing = (40, 44, 36), (1.5, 1.0, 1.2)
    v = _velocity(shape, spacing, peak_mm=4.0)
    u, u_inv = lddmm.forward_and_inverse(v)
    residual_vox = compose(u_inv, u)         # exp(−v)∘exp(v) − id
    residual = _field_mm(residual_vox, spacing).displacement_mm
    norm = np.linalg.norm(residual, axis=-1)
    core = norm[8:-8, 8:-8, 8:-8]                   # away from the border clamping of the sampling
    with capsys.disabled():
        print(f"\nexp(-v)∘exp(v) residual (peak |v| 4 mm): mean {core.mean():.4f} mm, max {core.max():.4f} mm "
              f"(whole grid max {norm.max():.4f} mm); max |u| {np.abs(_field_mm(u, spacing).displacement_mm).max():.2f} mm")
    assert core.mean() < 0.05 and core.max() < 0.3
    assert np.abs(_field_mm(u, spacing).displacement_mm).max() > 2.0   # the test moves something


def test_sliced_composition_equals_whole_composition():
    v = _velocity((20, 16, 18), (1.0, 1.0, 1.0), peak_mm=3.0)
    np.testing.assert_allclose(exponential(v, lddmm.STEPS, slab=3).numpy(), exponential(v, lddmm.STEPS).numpy(), atol=1e-5)


@pytest.mark.parametrize("slab", [None, 3])
def test_two_buffer_squarings_equal_the_plain_ones(slab):
    """The inference path's ping-pong buffers change the memory, not one bit of the fields."""
    from DeepRegistrationLib.deformable.patchwise import exponentials
    v = _velocity((20, 16, 18), (1.0, 1.0, 1.0), peak_mm=3.0).float()
    forward = exponential(v, lddmm.STEPS, slab=slab)
    start = v / 2 ** lddmm.STEPS
    buffers = (start.clone(), torch.empty_like(v))
    buffered, spare = squarings(buffers[0], lddmm.STEPS, slab=slab, spare=buffers[1])
    assert torch.equal(buffered, forward)
    assert {buffered.data_ptr(), spare.data_ptr()} == {b.data_ptr() for b in buffers}   # no third field
    whole_forward, whole_inverse = exponentials(v.clone(), fine_steps=lddmm.STEPS)
    assert torch.equal(whole_forward, exponential(v, lddmm.STEPS)) and torch.equal(whole_inverse, exponential(-v, lddmm.STEPS))


def test_refine_inverts_coarsen_on_affine_fields():
    """Trilinear interpolation reproduces an affine field, so refine(coarsen(u)) = u on odd and even sides: an
    even side gets one node past its last voxel, extrapolated linearly, so its last plane is interpolated
    too (it took the border value of the node before). On odd sides the nodes are every other voxel."""
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (9, 8, 11)), indexing="ij")
    u = torch.stack([0.1 * x - 0.2 * z + 1.0, 0.05 * y + 0.3, -0.15 * x + 0.1 * y])[None]
    coarse = lddmm.coarsen(u)
    assert coarse.shape[2:] == (5, 5, 6)
    torch.testing.assert_close(coarse[:, :, :, :4], u[:, :, ::2, ::2, ::2] / 2.0, atol=0, rtol=0)
    for slab in (None, 2):
        torch.testing.assert_close(lddmm.refine(coarse, u.shape[2:], slab), u, atol=1e-5, rtol=0)


def test_differentiable_integration_on_every_other_voxel_is_the_inference_one():
    """Instance optimization integrates as the output is integrated: forward_and_inverse with coarse squarings
    gives the fields of the inference path (two buffers, no autograd), and the gradient reaches the velocity
    through coarsen and refine (it equals a finite difference of the loss)."""
    from DeepRegistrationLib.deformable.patchwise import FINE_SQUARINGS, exponentials
    v = _velocity((20, 16, 18), (1.0, 1.0, 1.0), peak_mm=3.0).float()
    coarse_steps = lddmm.STEPS - FINE_SQUARINGS
    forward, inverse = lddmm.forward_and_inverse(v, coarse_steps=coarse_steps)
    expected_forward, expected_inverse = exponentials(v.clone())
    torch.testing.assert_close(forward, expected_forward, atol=1e-5, rtol=0)
    torch.testing.assert_close(inverse, expected_inverse, atol=1e-5, rtol=0)
    assert float((forward - exponential(v, lddmm.STEPS)).abs().max()) > 1e-4     # not the full-grid result
    v64 = v.double().requires_grad_(True)
    direction = torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(x):
        a, b = lddmm.forward_and_inverse(x, coarse_steps=coarse_steps)
        return (a ** 2).sum() + (b ** 3).sum()
    loss(v64).backward()
    eps = 1e-5
    numeric = (loss(v64.detach() + eps * direction) - loss(v64.detach() - eps * direction)) / (2 * eps)
    assert float((v64.grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5)


def test_integration_on_every_other_voxel_only_where_that_grid_holds_the_velocity():
    """Whole-volume integration runs 6 squarings on every other voxel and the last on the full grid when the
    coarse grid holds the velocity; then it agrees with 7 full-grid squarings by the tile benchmark's rule
    and stays diffeomorphic. A rougher velocity (white-noise momentum smoothed once) is not held there,
    and it is integrated on the full grid, exactly as before."""
    from DeepRegistrationLib.deformable.patchwise import FINE_SQUARINGS, integrate_velocity
    from DeepRegistrationLib.metrics.evaluation import fields_agree
    spacing = (2.5, 1.5, 2.0)                                    # z, y, x: anisotropic voxels, checked in mm
    rough = lddmm.smooth(_smooth_momentum((40, 48, 44), 1.0, 3).float(), spacing)
    mm = mm_per_voxel(spacing, 3, rough)
    for smoothings, expected_coarse in ((1, 0), (2, lddmm.STEPS - FINE_SQUARINGS)):
        v = rough if smoothings == 1 else lddmm.smooth(rough, spacing)
        v = lddmm.velocity_to_voxels(v * (3.0 / float(v.abs().max())), spacing)
        reference = lddmm.forward_and_inverse(v)
        forward, inverse, coarse_steps = integrate_velocity(v.clone(), spacing)
        assert coarse_steps == expected_coarse
        for u, ref in zip((forward, inverse), reference):
            ok, mean, largest, motion = fields_agree(u * mm, ref * mm)
            assert ok and motion > 1.0, (mean, largest, motion)
            assert coarse_steps > 0 or torch.equal(u, ref)
            assert jacobian_statistics(jacobian_determinant(_field_mm(u, spacing)))["folding_voxels"] == 0


@pytest.mark.parametrize("peak_mm", [3.0, 8.0])
def test_jacobian_positive_for_realistic_magnitudes(peak_mm):
    spacing = (1.0, 1.0, 1.0)
    v = _velocity((36, 36, 36), spacing, peak_mm, seed=5)
    for u in lddmm.forward_and_inverse(v):
        stats = jacobian_statistics(jacobian_determinant(_field_mm(u, spacing)))
        assert stats["folding_voxels"] == 0 and stats["jacobian_min"] > 0.05
        assert stats["jacobian_max"] > 1.05   # a real deformation, not a near identity
