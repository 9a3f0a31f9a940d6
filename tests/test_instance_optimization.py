"""Instance optimization (IO) of the three learned deformable methods, and the warnings for inputs far from a
model's training domain.

Case: the ICBM 2009a T1 (no bundled model was trained on it) at 2 mm, a 56x64x56 crop (moving), and a copy
under a known smooth diffeomorphism φ (fixed = moving∘φ); errors are read against φ.
"""
import numpy as np
import pytest
import torch

from DeepRegistrationLib.api import register, write_outputs
from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.errors import Cancelled
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.io import write_image
from DeepRegistrationLib.core.progress import Progress
from DeepRegistrationLib.core.transforms import DisplacementField
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import smooth_random_field
from DeepRegistrationLib.deformable import instance_optimization as io
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.deepsim_registration import load_registration_net
from DeepRegistrationLib.deformable.diffeo_registration import lddmm_parameters, load_momentum_net, operator_norm
from DeepRegistrationLib.deformable.dirnet_registration import load_dirnet, model_grid
from DeepRegistrationLib.core.network_input import matched_histogram, normalize_intensity, resample_to
from DeepRegistrationLib.deformable.model_input import domain_warnings
from DeepRegistrationLib.deformable.patchwise import predict_momentum, voxels_to_lps_mm
from DeepRegistrationLib.methods import SPECS
from registration_helpers import centre_crop, momentum_fields

torch.set_num_threads(1)

#: Fewer iterations than the defaults (deepsim's, cheap at 4 mm, as they are) keep the tests quick.
QUICK = {"iterations": 12}
ITERATIONS = {"diffeo": 8, "dirnet": 6, "deepsim": 30}


@pytest.fixture(scope="module")
def case():
    grid = sources.icbm152("t1").grid.with_spacing([2.0, 2.0, 2.0])
    t1 = centre_crop(resample_to(sources.icbm152("t1"), grid), (56, 64, 56))
    truth = smooth_random_field(t1.grid, np.random.default_rng(5), max_displacement_mm=4.0)
    return {"fixed": warp(t1, t1.grid, truth), "moving": t1, "truth": truth}      # registration should find truth


def error_mm(case, transform) -> float:
    """Mean |φ(x) − φ_true(x)| (mm) over the head (normalized fixed intensity > 0.1)."""
    grid = case["fixed"].grid
    head = normalize_intensity(case["fixed"].array) > 0.1
    est = DisplacementField.from_transform(transform, grid).displacement_mm
    return float(np.linalg.norm(est - case["truth"].displacement_mm, axis=-1)[head].mean())


@pytest.fixture(scope="module")
def results(case):
    """Each method without and with IO (quick settings): {(method, 'network' | 'io'): result}."""
    out = {}
    for method in ("diffeo", "dirnet", "deepsim"):
        out[method, "network"] = register(case["fixed"], case["moving"], method, iterations=0)
        out[method, "io"] = register(case["fixed"], case["moving"], method, iterations=ITERATIONS[method])
    return out


@pytest.mark.parametrize("method", ["diffeo", "dirnet", "deepsim"])
def test_instance_optimization_improves_on_the_network_alone(case, results, method, capsys):
    network, refined = results[method, "network"], results[method, "io"]
    before = error_mm(case, DisplacementField(np.zeros_like(case["truth"].displacement_mm), case["fixed"].grid))
    e_net, e_io = error_mm(case, network.transform), error_mm(case, refined.transform)
    record = refined.report["instance_optimization"]
    with capsys.disabled():
        print(f"\n{method} on ICBM T1 (2 mm, 56x64x56), known 4 mm deformation: error {before:.3f} mm -> network "
              f"{e_net:.3f} mm -> IO ({record['iterations_done']} iterations, {record['seconds']:.1f} s) {e_io:.3f} mm")
    # measured: none 1.19 mm; diffeo 0.71 -> 0.525, dirnet 1.73 -> 0.758, deepsim 1.31 -> 0.95
    # (12 iterations per level: diffeo 0.49, dirnet 0.59)
    assert e_io < e_net - 0.1 and e_io < before - 0.15
    assert "instance_optimization" not in network.report
    assert [s["iterations_planned"] for s in record["stages"]] == [ITERATIONS[method]] * len(record["stages"])
    for stage in record["stages"]:
        assert stage["iterations_done"] == len(stage["loss"]) and stage["seconds"] > 0
        assert min(stage["loss"]) < stage["loss"][0]                 # each level lowers its loss
    assert refined.report["folding_voxels"] == 0


def test_diffeo_with_instance_optimization_stays_diffeomorphic_with_an_exact_inverse(case, results):
    r = results["diffeo", "io"]
    inverse_det = np.linalg.det(np.eye(3) + np.stack(np.gradient(
        r.inverse.displacement_mm.transpose(3, 0, 1, 2), *reversed(r.inverse.grid.spacing.tolist()), axis=(1, 2, 3)),
        1).transpose(2, 3, 4, 0, 1)[..., ::-1])
    assert r.report["folding_voxels"] == 0 and float(inverse_det.min()) > 0
    ic = r.report["inverse_consistency_mm"]
    assert ic["mean"] < 0.05 and ic["fraction_of_voxels"] > 0.9


def test_iterations_zero_is_the_network_alone_exactly(case, results):
    """iterations=0 gives what the networks predict, computed here without ``register`` (diffeo's moving image
    matched to the fixed image's intensities first)."""
    fixed, moving = case["fixed"], case["moving"]
    net, meta = load_momentum_net(SPECS["diffeo"].default_model)
    f = normalize_intensity(fixed.array)
    m = matched_histogram(normalize_intensity(moving.array), f)
    momentum = predict_momentum(net, f, m, 48, 12, precision=results["diffeo", "network"].report["network_precision"])
    u = momentum_fields(momentum, [2.0] * 3, **lddmm_parameters(meta))[0]
    expected = voxels_to_lps_mm(u, fixed.grid)
    got = results["diffeo", "network"].transform.displacement_mm
    assert np.abs(got - expected).max() < 1e-4

    net, meta = load_dirnet(SPECS["dirnet"].default_model)
    grid = model_grid(fixed.grid, meta["patch_size"], meta["spacing_mm"])
    fm = [torch.as_tensor(normalize_intensity(resample_to(im, grid).array))[None, None] for im in (fixed, moving)]
    with torch.no_grad():
        u = net.displacement(*fm)[0][0].movedim(0, -1).numpy()
    field = DisplacementField((u @ (grid.direction @ np.diag(grid.spacing)).T).astype(np.float32), grid)
    expected = field.continued_onto(fixed.grid).displacement_mm
    assert np.abs(results["dirnet", "network"].transform.displacement_mm - expected).max() < 1e-4

    net, meta = load_registration_net(SPECS["deepsim"].default_model)
    d = results["deepsim", "network"].report["model_grid"]
    grid = Grid(tuple(d["size"]), np.asarray(d["spacing"]), np.asarray(d["origin"]), np.asarray(d["direction"]))
    fm = [torch.as_tensor(normalize_intensity(resample_to(im, grid).array))[None, None] for im in (fixed, moving)]
    with torch.no_grad():
        u = net.displacement(fm[1], fm[0])[0].movedim(0, -1).numpy()
    field = DisplacementField((u @ (grid.direction @ np.diag(grid.spacing)).T).astype(np.float32), grid)
    expected = field.continued_onto(fixed.grid).displacement_mm
    assert np.abs(results["deepsim", "network"].transform.displacement_mm - expected).max() < 1e-4


def test_masks_restrict_the_similarity(case, capsys):
    """The moving image is corrupted by a bright slab outside a fixed mask. Masks act on IO only (the network
    sees the slab either way): with the mask IO ignores the slab and aligns the masked half better than
    without it; dropping the mask (the mutation) changes the result."""
    fixed, moving = case["fixed"], case["moving"]
    half = fixed.grid.shape[2] // 2
    mask = np.zeros(fixed.grid.shape, np.uint8)
    mask[:, :, :half] = 1
    corrupt = moving.array.copy()
    corrupt[:, :, -14:] = np.percentile(moving.array, 99) * 1.5
    corrupted = moving.with_array(corrupt)
    one_level = {"iterations": 24, "io_levels": 1}     # the model grid only (a second level has ~8x its voxels)
    masked = register(fixed, corrupted, "dirnet", fixed_mask=Image(mask, fixed.grid), **one_level).transform
    unmasked = register(fixed, corrupted, "dirnet", **one_level).transform
    field = {k: DisplacementField.from_transform(t, fixed.grid).displacement_mm
             for k, t in (("masked", masked), ("unmasked", unmasked))}
    inside = mask.astype(bool) & (normalize_intensity(fixed.array) > 0.1)
    error = {k: float(np.linalg.norm(u - case["truth"].displacement_mm, axis=-1)[inside].mean()) for k, u in field.items()}
    change = float(np.linalg.norm(field["masked"] - field["unmasked"], axis=-1)[inside].mean())
    with capsys.disabled():
        print(f"\ndirnet IO with a slab outside the mask: error in the mask {error['masked']:.3f} mm with the mask, "
              f"{error['unmasked']:.3f} mm without; fields differ by {change:.3f} mm there")
    assert change > 0.05                                  # measured: 1.387 mm
    assert error["masked"] < error["unmasked"]             # measured: 1.570 vs 1.986 mm


def test_divergence_keeps_the_best_iterate_and_says_so(case, results):
    r = register(case["fixed"], case["moving"], "diffeo", iterations=10, learning_rate=1e5)
    stages = r.report["instance_optimization"]["stages"]
    assert any(s["stopped"] for s in stages)
    assert any("stopped early" in w for w in r.report["warnings"])
    assert r.report["folding_voxels"] == 0
    assert error_mm(case, r.transform) <= error_mm(case, results["diffeo", "network"].transform) + 0.05


@pytest.mark.parametrize("method", ["dirnet", "deepsim"])
def test_an_iterate_that_folds_is_refused_for_every_method(case, method):
    """A step far too large folds the field at once; the refusal keeps the last fold-free iterate."""
    r = register(case["fixed"], case["moving"], method, iterations=4, io_levels=1, learning_rate=500.0)
    stages = r.report["instance_optimization"]["stages"]
    assert any("folding voxels" in (s["stopped"] or "") for s in stages), stages
    assert r.report["folding_voxels"] == 0


def test_a_correction_that_folds_on_the_output_grid_is_scaled_down_until_it_does_not(oblique_grid):
    """The field the user gets is the working grid's field on the fixed grid: where the full IO correction
    folds there, the largest of its halves that does not is kept (the Jacobian as the report measures it).
    Both grids oblique and anisotropic; the working grid twice as coarse, as a model grid is."""
    from DeepRegistrationLib.core.jacobian import jacobian_determinant
    working = Grid(tuple((n + 1) // 2 for n in oblique_grid.size), oblique_grid.spacing * 2, oblique_grid.origin,
                   oblique_grid.direction)
    start = torch.zeros(1, 3, *working.shape)
    bump = torch.as_tensor(smooth_random_field(working, np.random.default_rng(4), 3.0, 8.0, integrate=False)
                           .displacement_mm).permute(3, 0, 1, 2)[None].float()

    def to_output(u):
        return DisplacementField(u[0].permute(1, 2, 3, 0).numpy(), working).continued_onto(oblique_grid)

    def folds(u):
        return int((jacobian_determinant(to_output(u)) <= 0).sum())
    scale = next(a for a in (2.0, 4.0, 8.0, 16.0, 32.0) if folds(a * bump) and not folds(a / 4 * bump))
    output, kept, warning = io.fold_free_on_output(start, scale * bump, to_output)
    assert output.grid.same_as(oblique_grid)
    assert kept < 1.0 and (jacobian_determinant(output) > 0).all()
    assert f"folded {folds(scale * bump)} voxels" in warning and f"kept {kept:g}" in warning
    assert folds(2 * kept * scale * bump) > 0                                  # the largest fold-free half
    output, kept, warning = io.fold_free_on_output(start, scale / 8 * bump, to_output)
    assert kept == 1.0 and warning is None
    np.testing.assert_array_equal(output.displacement_mm, to_output(scale / 8 * bump).displacement_mm)


def test_cancel_during_instance_optimization_raises_and_writes_nothing(case, tmp_path):
    seen = []
    progress = Progress(lambda f, message: seen.append(message),
                        should_cancel=lambda: any("instance optimization" in s for s in seen))
    out = tmp_path / "T.h5"
    with pytest.raises(Cancelled):
        result = register(case["fixed"], case["moving"], "deepsim", progress=progress, **QUICK)
        write_outputs(result, out_transform=out)
    assert any("instance optimization" in s for s in seen)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_operator_norm_is_the_lddmm_energy():
    """‖Lv‖² by finite differences equals ⟨v, m⟩ for v = K⁻¹ * m (FFT), m supported away from the border."""
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(1, 3, 40, 44, 36)
    m[:, :, 12:28, 12:32, 10:26] = torch.randn(1, 3, 16, 20, 16, generator=g)
    spacing = [2.0, 2.0, 2.0]
    v = lddmm.smooth(m, spacing)
    energy = float((v * m).sum(dim=1).mean())
    assert float(operator_norm(v, spacing, lddmm.ALPHA, lddmm.GAMMA)) == pytest.approx(energy, rel=1e-3)


def test_folding_voxels_counts_a_fold():
    u = torch.zeros(1, 3, 10, 10, 10)
    assert io.folding_voxels(u) == 0
    u[0, 0, :, :, 5:] = -3.0                        # x + u(x) runs backwards across the step
    assert io.folding_voxels(u) > 0


def test_out_of_domain_inputs_are_warned_about(case, tmp_path, capsys):
    meta = {"spacing_mm": [2.0, 2.0, 2.0], "patch_size": [48, 48, 48]}
    fixed = case["fixed"]
    assert domain_warnings(fixed, case["moving"], meta) == []
    coarse = warp(fixed, fixed.grid.with_spacing([6.0, 6.0, 6.0]))
    labels = fixed.with_array((normalize_intensity(fixed.array) * 3).round().astype(np.float32))
    ct = fixed.with_array(normalize_intensity(fixed.array) * 2000 - 1000)
    small = centre_crop(fixed, (20, 20, 20))
    text = " | ".join(domain_warnings(coarse, labels, meta) + domain_warnings(ct, small, meta))
    for expected in ("fixed image: voxels of 6x6x6 mm are over 2x", "moving image: only 4 distinct intensities",
                     "fixed image: intensities from -1000", "moving image: field of view 40x40x40 mm"):
        assert expected in text
    write_image(fixed, tmp_path / "f.nii.gz")
    write_image(ct, tmp_path / "m.nii.gz")
    assert main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--method", "dirnet",
                 "--param", "iterations=0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: moving image: intensities from -1000" in err


def test_diffeo_is_not_pulled_by_a_change_of_contrast(case, results, capsys):
    """The moving image under a gamma of 1.6 (another scanner's contrast curve). diffeo matches its intensities
    to the fixed image's before the network and IO see it, which keeps both about as close to φ as with the
    original contrast (without the matching, this test fails)."""
    moving = case["moving"]
    lo, hi = float(moving.array.min()), float(moving.array.max())
    gamma = moving.with_array((lo + (hi - lo) * ((moving.array - lo) / (hi - lo)) ** 1.6).astype(np.float32))
    network = error_mm(case, register(case["fixed"], gamma, "diffeo", iterations=0).transform)
    refined = error_mm(case, register(case["fixed"], gamma, "diffeo", iterations=ITERATIONS["diffeo"]).transform)
    original = [error_mm(case, results["diffeo", k].transform) for k in ("network", "io")]
    with capsys.disabled():
        print(f"\ndiffeo under a gamma of 1.6: network {network:.3f} mm, IO {refined:.3f} mm "
              f"(original contrast: {original[0]:.3f} mm, {original[1]:.3f} mm)")
    assert network < original[0] + 0.05 and refined < original[1] + 0.05


def test_histogram_matching_reads_only_where_both_images_have_signal():
    """A monotone contrast change is undone, and zero padding of another extent in either image (another field
    of view) does not move the map: it is read over the voxels where both are above zero."""
    rng = np.random.default_rng(0)
    fixed = rng.uniform(0.01, 1.0, (20, 20, 20)).astype(np.float32)
    moving = fixed ** 1.6
    padded_fixed, padded_moving = fixed.copy(), moving.copy()
    padded_fixed[:6], padded_moving[-3:] = 0.0, 0.0
    matched = matched_histogram(padded_moving, padded_fixed)
    inside = padded_moving > 0
    assert np.abs(matched - fixed)[inside].max() < 0.02
    assert (matched[~inside] == 0).all()
