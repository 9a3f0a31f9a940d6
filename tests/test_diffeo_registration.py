"""Whole-volume patch-wise prediction, ``--method diffeo`` end to end on a real pair, and the CLI."""
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from DeepRegistrationLib.api import register
from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.device import has_native_bfloat16, resolve_precision
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.io import read_image, write_image
from DeepRegistrationLib.core.jacobian import jacobian_determinant
from DeepRegistrationLib.core.transforms import DisplacementField, RigidTransform, read_transform
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.synthetic import smooth_random_field
from DeepRegistrationLib.deformable.diffeo_registration import field_on_grid, lddmm_parameters, load_momentum_net
from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.core.network_input import normalize_intensity, resample_to
from DeepRegistrationLib.deformable import lddmm
from DeepRegistrationLib.deformable.patchwise import FINE_SQUARINGS, predict_momentum, tile_layout, voxels_to_lps_mm
from DeepRegistrationLib.core.spatial_transformer import warp_voxels
from DeepRegistrationLib.metrics.evaluation import dice_per_label, fields_agree
from DeepRegistrationLib.metrics.similarity import normalized_mse
from DeepRegistrationLib.training.diffeo_trainer import DiffeoTraining, diffeo_loss
from registration_helpers import centre_crop, momentum_fields

DEFAULT_MODEL = SPECS["diffeo"].default_model

torch.set_num_threads(1)


@pytest.mark.parametrize("n,tile,discard", [(91, 48, 12), (109, 64, 12), (48, 48, 12), (100, 32, 4)])
def test_tile_layout_keeps_centres_and_covers_the_axis(n, tile, discard):
    layout = tile_layout(n, tile, discard)
    covered = np.zeros(n, int)
    for start, lo, hi in layout:
        assert 0 <= start and start + tile <= n and start <= lo < hi <= start + tile
        assert lo == 0 or lo - start >= discard            # a discarded border unless at the volume border
        assert hi == n or start + tile - hi >= discard
        covered[lo:hi] += 1
    assert covered.min() >= 1


@pytest.fixture(scope="module")
def case():
    """ICBM 2009a T1 at 2 mm (brain only; ICBM152 is a train-split subject of the corpus, whose label maps the
    bundled model's last fine-tuning synthesized heads from) and a copy under a known diffeomorphism."""
    grid = sources.icbm152("t1").grid.with_spacing([2.0, 2.0, 2.0])
    t1 = centre_crop(resample_to(sources.icbm152("t1"), grid), (64, 80, 64))
    gm = centre_crop(resample_to(sources.icbm152("gm"), grid), (64, 80, 64))
    truth = smooth_random_field(t1.grid, np.random.default_rng(11), max_displacement_mm=4.0)
    moving, moving_gm = warp(t1, t1.grid, truth), warp(gm, t1.grid, truth)
    result = register(t1, moving, "diffeo", iterations=0)          # the network alone (IO: test_instance_optimization)
    return {"fixed": t1, "moving": moving, "fixed_gm": gm, "moving_gm": moving_gm, "result": result, "truth": truth}


def test_end_to_end_regular_invertible_and_on_the_fixed_grid(case, capsys):
    r = case["result"]
    assert "bundled" in r.report["model_note"]
    assert r.transform.grid.same_as(case["fixed"].grid) and r.inverse.grid.same_as(case["moving"].grid)
    assert r.report["folding_voxels"] == 0 and r.report["jacobian_min"] > 0
    ic = r.report["inverse_consistency_mm"]
    assert ic["mean"] < 0.02 and ic["max"] < 0.5 and ic["fraction_of_voxels"] > 0.9   # 0.0081 mm, 0.128 mm
    assert r.report["squarings_on_every_other_voxel"] == lddmm.STEPS - FINE_SQUARINGS   # 64x80x64: even sides
    with capsys.disabled():
        print(f"\ndiffeo on ICBM T1 (2 mm, 64x80x64): folding {r.report['folding_voxels']}, Jacobian "
              f"[{r.report['jacobian_min']:.3f}, {r.report['jacobian_max']:.3f}], inverse consistency "
              f"{r.report['inverse_consistency_mm']['mean']:.4f} mm (max {r.report['inverse_consistency_mm']['max']:.4f}), "
              f"{r.report['seconds_total']:.1f} s")


def test_end_to_end_improves_mse_and_dice_without_folding(case, capsys):
    r = case["result"]
    fixed, moving = case["fixed"].array, case["moving"].array
    warped_gm = warp(case["moving_gm"], case["fixed"].grid, r.transform).array
    mse_before = float(np.mean((moving - fixed) ** 2))
    mse_after = float(np.mean((r.warped.array - fixed) ** 2))
    dice_before = dice_per_label(case["fixed_gm"].array > 0.5, case["moving_gm"].array > 0.5)[1]
    dice_after = dice_per_label(case["fixed_gm"].array > 0.5, warped_gm > 0.5)[1]
    with capsys.disabled():
        print(f"\ndiffeo on ICBM T1 (2 mm, 64x80x64) with a known 4 mm deformation: MSE {mse_before:.1f} -> "
              f"{mse_after:.1f}, GM Dice {dice_before:.4f} -> {dice_after:.4f}, folding {r.report['folding_voxels']}, "
              f"Jacobian [{r.report['jacobian_min']:.3f}, {r.report['jacobian_max']:.3f}], inverse consistency "
              f"{r.report['inverse_consistency_mm']['mean']:.4f} mm, {r.report['seconds_total']:.1f} s")
    assert "bundled" in r.report["model_note"]
    assert mse_after < 0.9 * mse_before
    assert dice_after > dice_before + 0.01         # bundled model: +0.031
    assert r.report["folding_voxels"] == 0 and r.report["jacobian_min"] > 0
    assert r.report["inverse_consistency_mm"]["mean"] < 0.1
    assert r.report["nmi64_after"] > r.report["nmi64_before"]


def test_voxel_fields_become_physical_fields_on_oblique_anisotropic_grids(oblique_grid):
    """voxels_to_lps_mm: a voxel displacement u on the grid maps the voxel centre p(i) to p(i + u(i)) (the
    grid's direction and spacing applied); field_on_grid: the field resampled onto another oblique grid,
    through a rigid map P, maps x to φ(P(x)) at that grid's voxel centres."""
    rng = np.random.default_rng(3)
    u_vox = torch.as_tensor(np.stack([gaussian_filter(rng.normal(size=oblique_grid.shape), 2) * 4 for _ in range(3)])
                            [None], dtype=torch.float32)                                   # (1, 3, nz, ny, nx), x-first
    field = DisplacementField(voxels_to_lps_mm(u_vox, oblique_grid), oblique_grid)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in oblique_grid.size], indexing="ij"), -1).reshape(-1, 3)
    moved = idx + u_vox[0].permute(3, 2, 1, 0).reshape(-1, 3).numpy()                     # x-first index order
    expected = oblique_grid.index_to_physical(moved.astype(float))
    assert np.abs(field.transform_points(oblique_grid.index_to_physical(idx.astype(float))) - expected).max() < 1e-4
    assert float(u_vox.abs().max()) > 0.5                                                   # the voxels really move

    target = _oblique_grid(Image(np.zeros(oblique_grid.shape, np.float32), oblique_grid), (17, 21, 12),
                           (1.1, 1.0, 1.7), (-0.3, 0.2, 0.1))
    rigid = RigidTransform([0.05, -0.04, 0.08], [0.6, -0.4, 0.3], oblique_grid.center_physical())
    on_target = field_on_grid(field, target, rigid)
    assert on_target.grid.same_as(target)
    centres = target.index_to_physical(np.stack(np.meshgrid(*[np.arange(n) for n in target.size], indexing="ij"),
                                                -1).reshape(-1, 3).astype(float))
    assert np.abs(on_target.transform_points(centres) - field.transform_points(rigid.transform_points(centres))).max() < 1e-3


def _oblique_grid(image: Image, size_xyz, spacing, angles_rad) -> Grid:
    """An anisotropic grid of ``size_xyz`` voxels with rotated axes, centred on ``image``."""
    direction = RigidTransform(angles_rad).rotation_matrix()
    spacing = np.asarray(spacing, float)
    origin = image.grid.center_physical() - direction @ (spacing * (np.asarray(size_xyz) - 1) / 2)
    return Grid(tuple(size_xyz), spacing, origin, direction)


def test_oblique_anisotropic_inputs_register_in_physical_space(case, capsys):
    """Fixed and moving on two different oblique, anisotropic grids: the method resamples both to the model
    spacing along the fixed image's axes, refines it by instance optimization on those grids, and returns the
    fields on the images' own grids; the GM overlap in physical space improves."""
    fixed_grid = _oblique_grid(case["fixed"], (56, 58, 38), (1.8, 2.2, 2.6), (0.15, -0.1, 0.2))
    moving_grid = _oblique_grid(case["fixed"], (44, 76, 48), (2.4, 1.7, 2.1), (-0.1, 0.12, 0.08))
    fixed, fixed_gm = warp(case["fixed"], fixed_grid), warp(case["fixed_gm"], fixed_grid)
    moving, moving_gm = warp(case["moving"], moving_grid), warp(case["moving_gm"], moving_grid)
    r = register(fixed, moving, "diffeo", iterations=4)
    assert r.transform.grid.same_as(fixed_grid) and r.inverse.grid.same_as(moving_grid)
    dice_before = dice_per_label(fixed_gm.array > 0.5, warp(moving_gm, fixed_grid).array > 0.5)[1]
    dice_after = dice_per_label(fixed_gm.array > 0.5, warp(moving_gm, fixed_grid, r.transform).array > 0.5)[1]
    with capsys.disabled():
        print(f"\ndiffeo on oblique anisotropic grids: GM Dice {dice_before:.4f} -> {dice_after:.4f}, folding "
              f"{r.report['folding_voxels']}, inverse consistency {r.report['inverse_consistency_mm']['mean']:.4f} mm")
    assert dice_after > dice_before + 0.03         # measured 0.8763 -> 0.9180
    assert r.report["folding_voxels"] == 0
    assert r.report["inverse_consistency_mm"]["mean"] < 0.1


def test_momentum_fitted_with_eq_3_2_registers_the_pair_through_the_prediction_path(case, capsys):
    """What a trained network has to predict, found without one: the whole-volume momentum optimized
    directly with the training loss (eq. 3.2, normalized MSE, thesis defaults), then smoothed, integrated
    and converted to an LPS field as ``register`` does. Loss, kernel, integration, masking and the
    voxel-to-LPS conversion must agree for this to register; it also shows what the improvement test
    above may ask of a model."""
    fixed, moving = case["fixed"], case["moving"]
    f = torch.as_tensor(normalize_intensity(fixed.array))[None, None].float()
    m = torch.as_tensor(normalize_intensity(moving.array))[None, None].float()
    settings = DiffeoTraining(spacing_mm=2.0)
    steps = 10                                   # the checks below, measured with 10 and with 40 steps
    momentum = torch.zeros(1, 3, *f.shape[2:], requires_grad=True)
    optimizer = torch.optim.Adam([momentum], lr=1.0)
    for _ in range(steps):
        loss = diffeo_loss(momentum, f, m, settings, normalized_mse, settings.reg_weight)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    u_vox, _ = momentum_fields(momentum.detach(), [2.0] * 3)
    field = DisplacementField(voxels_to_lps_mm(u_vox, fixed.grid), fixed.grid)
    warped, warped_gm = warp(moving, fixed.grid, field).array, warp(case["moving_gm"], fixed.grid, field).array
    mse_before = float(np.mean((moving.array - fixed.array) ** 2))
    mse_after = float(np.mean((warped - fixed.array) ** 2))
    gm = case["fixed_gm"].array > 0.5
    dice_before = dice_per_label(gm, case["moving_gm"].array > 0.5)[1]
    dice_after = dice_per_label(gm, warped_gm > 0.5)[1]
    det = jacobian_determinant(field)
    with capsys.disabled():
        print(f"\nmomentum fitted with eq. 3.2 ({steps} Adam steps) on the held-out pair: MSE {mse_before:.1f} -> "
              f"{mse_after:.1f}, GM Dice {dice_before:.4f} -> {dice_after:.4f}, det J [{det.min():.3f}, {det.max():.3f}]")
    assert mse_after < 0.5 * mse_before          # measured: 122.3 -> 41.4 (40 steps: 32.1)
    assert dice_after > dice_before + 0.02       # measured: 0.9245 -> 0.9570 (40 steps: 0.9667)
    assert det.min() > 0


def test_stitching_agrees_between_tile_sizes(case):
    net, meta = load_momentum_net(DEFAULT_MODEL)
    f = normalize_intensity(case["fixed"].array)
    m = normalize_intensity(case["moving"].array)
    fields = {}
    for tile in (48, 64):
        momentum = predict_momentum(net, f, m, tile, 12)
        fields[tile] = momentum_fields(momentum, [2.0] * 3, **lddmm_parameters(meta))[0] * 2.0   # mm
    diff = (fields[48] - fields[64]).norm(dim=1)
    magnitude = fields[64].norm(dim=1)
    print(f"\nstitching 48³ vs 64³ tiles: mean |Δu| {float(diff.mean()):.4f} mm, max {float(diff.max()):.4f} mm; "
          f"mean |u| {float(magnitude.mean()):.4f} mm, max {float(magnitude.max()):.4f} mm")
    assert float(magnitude.mean()) > 0.3                  # the model moves the image
    # measured with the bundled model: 13 % of the mean motion (docs/diffeomorphic.md, tile benchmark)
    assert float(diff.mean()) < 0.2 * float(magnitude.mean())
    assert float(diff.max()) < 0.5 * float(magnitude.max())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bfloat16_network_agrees_with_float32(case, capsys, device):
    """The network run in bfloat16 agrees with float32 by the tile benchmark's rule, with the same GM Dice."""
    net, meta = load_momentum_net(DEFAULT_MODEL, device)
    f, m = normalize_intensity(case["fixed"].array), normalize_intensity(case["moving"].array)
    moving_gm = torch.as_tensor(case["moving_gm"].array, dtype=torch.float32)[None, None]
    fixed_gm = (case["fixed_gm"].array > 0.5).astype(np.uint8)
    fields, dice = {}, {}
    for precision in ("float32", "bfloat16"):
        momentum = predict_momentum(net, f, m, 48, 12, device, precision=precision)
        assert momentum.dtype == torch.float32
        fields[precision] = momentum_fields(momentum, [2.0] * 3, **lddmm_parameters(meta))[0].cpu() * 2.0   # mm
        warped = warp_voxels(moving_gm, fields[precision] / 2.0, padding_mode="zeros")[0, 0].numpy()
        dice[precision] = dice_per_label(fixed_gm, (warped > 0.5).astype(np.uint8), [1])[1]
    ok, mean, largest, motion = fields_agree(fields["bfloat16"], fields["float32"])
    with capsys.disabled():
        print(f"\nbfloat16 vs float32 network ({device}): mean |Δu| {mean:.4f} mm, max {largest:.4f} mm "
              f"(mean |u| {motion:.3f} mm); GM Dice {dice['float32']:.4f} vs {dice['bfloat16']:.4f}")
    assert motion > 0.3 and ok
    assert abs(dice["bfloat16"] - dice["float32"]) < 0.002
    with pytest.raises(InputError, match="unknown precision 'float16'"):
        predict_momentum(net, f, m, 48, 12, device, precision="float16")


@pytest.mark.gpu
def test_cuda_registration_agrees_with_the_cpu_one(case, capsys):
    """The whole register() call on CUDA (float32 network) against the CPU in float32: the same field by the
    tile benchmark's rule, diffeomorphic, on the fixed grid."""
    results = {d: register(case["fixed"], case["moving"], "diffeo", device=d, precision="float32", iterations=0)
               for d in ("cpu", "cuda")}
    fields = {d: torch.as_tensor(DisplacementField.from_transform(r.transform, case["fixed"].grid).displacement_mm)
              .permute(3, 0, 1, 2)[None] for d, r in results.items()}
    ok, mean, largest, motion = fields_agree(fields["cuda"], fields["cpu"])
    with capsys.disabled():
        print(f"\ncuda vs cpu register(): mean |Δu| {mean:.4f} mm, max {largest:.4f} mm (mean |u| {motion:.3f} mm); "
              f"{results['cuda'].report['seconds_total']:.2f} s on {torch.cuda.get_device_name()}")
    assert ok and results["cuda"].report["folding_voxels"] == 0
    assert results["cuda"].report["network_precision"] == "float32"


def test_precision_auto_is_bfloat16_only_on_a_cpu_with_bfloat16_instructions():
    assert resolve_precision("auto", "cpu") == ("bfloat16" if has_native_bfloat16("cpu") else "float32")
    assert resolve_precision("auto", "cuda") == "float32"            # not measured on a GPU
    assert resolve_precision("float32", "cpu") == "float32" and resolve_precision("BFloat16", "cuda") == "bfloat16"
    with pytest.raises(InputError, match="unknown precision 'half'"):
        resolve_precision("half", "cpu")


def test_cli_register_diffeo_writes_every_output(case, tmp_path, capsys):
    """Inputs at 3 mm are resampled to the model's 2 mm; outputs come back on the images' own grids."""
    grid3 = case["fixed"].grid.with_spacing([3.0, 3.0, 3.0])
    write_image(warp(case["fixed"], grid3), tmp_path / "f.nii.gz")
    write_image(warp(case["moving"], grid3), tmp_path / "m.nii.gz")
    outs = {k: tmp_path / v for k, v in {"--out-transform": "T.h5", "--out-inverse": "Tinv.h5",
                                         "--out-volume": "W.nrrd", "--out-jacobian": "J.nrrd",
                                         "--out-inverse-volume": "Winv.nrrd", "--report": "R.json"}.items()}
    args = ["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--method", "diffeo", "--quiet",
            "--param", "tile=48", "--param", "iterations=0"]
    for k, v in outs.items():
        args += [k, str(v)]
    assert main(args) == 0
    assert "bundled" in capsys.readouterr().out
    assert all(p.exists() for p in outs.values())
    report = json.loads(outs["--report"].read_text())
    for key in ("folding_percent", "jacobian_mean", "jacobian_min", "jacobian_max", "inverse_consistency_mm",
                "seconds_total", "seconds_momentum", "seconds_integration"):
        assert key in report
    assert report["folding_voxels"] == 0 and report["tile"] == 48
    assert report["network_precision"] == resolve_precision("auto", "cpu")
    jac = read_image(outs["--out-jacobian"], "jacobian")
    assert jac.grid.same_as(grid3) and float(jac.array.min()) > 0
    assert read_image(outs["--out-volume"], "w").grid.same_as(grid3)
    forward, inverse = read_transform(outs["--out-transform"]), read_transform(outs["--out-inverse"])
    pts = grid3.index_to_physical(np.array([[5.0, 6.0, 7.0], [10.0, 12.0, 9.0]]))
    assert np.abs(inverse.transform_points(forward.transform_points(pts)) - pts).max() < 0.3
    assert main(args[:5] + ["--param", "tile=50"]) == 2          # bad tile: a clear error, nothing written
    assert main(args[:5] + ["--param", "precision=half"]) == 2
