"""The MRML adapter against the real Slicer core (``slicer-core`` wheel): geometry, transforms, results."""
import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="Slicer's core (the slicer-core wheel, CPython 3.11 on Linux) is not installed")
vtk = pytest.importorskip("vtk")

from DeepRegistrationLib import mrml  # noqa: E402
from DeepRegistrationLib.core.errors import InputError  # noqa: E402
from DeepRegistrationLib.core.image import Grid, Image  # noqa: E402
from DeepRegistrationLib.core.io import write_image  # noqa: E402
from DeepRegistrationLib.core.transforms import DisplacementField, RigidTransform  # noqa: E402
from DeepRegistrationLib.core.warp import warp  # noqa: E402
from DeepRegistrationLib.data import sources  # noqa: E402
from DeepRegistrationLib.metrics.evaluation import rigid_errors  # noqa: E402
from DeepRegistrationLib.rigid.pyramid import downsample  # noqa: E402

F = np.array([-1.0, -1.0, 1.0])
RIGID = ("learned-metric", "deepsim-rigid")


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    return s


def _load_with_slicer(path, scene):
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    return logic.AddArchetypeVolume(str(path), "loaded")


def test_volume_read_by_slicer_has_sitk_geometry(tmp_path, scene, smooth_volume):
    write_image(smooth_volume, tmp_path / "oblique.nrrd")
    node = _load_with_slicer(tmp_path / "oblique.nrrd", scene)
    image = mrml.volume_node_to_image(node)
    assert image.grid.same_as(smooth_volume.grid, tol=1e-4)
    np.testing.assert_allclose(image.array, smooth_volume.array, atol=1e-5)
    # a voxel's RAS position in Slicer is the LPS position of SimpleITK with x, y negated
    itk = sitk.ReadImage(str(tmp_path / "oblique.nrrd"))
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = m.MultiplyPoint((3, 5, 7, 1))[:3]
    np.testing.assert_allclose(ras, F * itk.TransformIndexToPhysicalPoint((3, 5, 7)), atol=1e-4)


def test_image_to_node_round_trip(scene, smooth_volume):
    node = mrml.image_to_volume_node(smooth_volume, scene, "roundtrip")
    back = mrml.volume_node_to_image(node)
    assert back.grid.same_as(smooth_volume.grid, tol=1e-9)
    np.testing.assert_array_equal(back.array, smooth_volume.array)


def test_linear_transform_node_maps_points_like_library(scene):
    t = RigidTransform([0.1, -0.2, 0.15], [4.0, -3.0, 7.0], [10.0, 20.0, -5.0])
    node = mrml.transform_to_node(t, scene, "rigid")
    pts_lps = np.random.default_rng(0).normal(size=(6, 3)) * 40
    mapped_ras = mrml.transform_ras_points(node, pts_lps * F)
    np.testing.assert_allclose(mapped_ras * F, t.transform_points(pts_lps), atol=1e-6)
    back = mrml.node_to_transform(node)
    np.testing.assert_allclose(back.matrix4(), t.matrix4(), atol=1e-9)


def test_displacement_field_node_maps_points_like_library(scene, oblique_grid):
    rng = np.random.default_rng(2)
    from scipy.ndimage import gaussian_filter
    u = np.stack([gaussian_filter(rng.normal(size=oblique_grid.shape), 2) * 5 for _ in range(3)], -1).astype(np.float32)
    field = DisplacementField(u, oblique_grid)
    node = mrml.transform_to_node(field, scene, "field", oblique_grid)
    idx = np.array([[3, 4, 5], [10, 9, 7], [15.5, 3.25, 8.5]])
    pts_lps = oblique_grid.index_to_physical(idx)
    np.testing.assert_allclose(mrml.transform_ras_points(node, pts_lps * F) * F, field.transform_points(pts_lps),
                               atol=1e-3)


def test_grid_node_to_transform_matches_per_point_vtk_and_is_vectorized(scene, oblique_grid):
    """``node_to_transform`` samples a grid transform with one VTK call for all voxels; it equals the per-voxel
    ``TransformPoint`` it replaced, and is much faster (both timed in this run)."""
    import time
    rng = np.random.default_rng(3)
    grid = Grid((48, 40, 36), oblique_grid.spacing, oblique_grid.origin, oblique_grid.direction)
    u = (rng.normal(size=(*grid.shape, 3)) * 2).astype(np.float32)
    node = mrml.transform_to_node(DisplacementField(u, grid), scene, "field", grid)
    started = time.perf_counter()
    field = mrml.node_to_transform(node, grid)
    vectorized = time.perf_counter() - started
    pts_lps = grid.index_to_physical(np.stack(np.meshgrid(
        *[np.arange(n) for n in reversed(grid.size)], indexing="ij")[::-1], -1).reshape(-1, 3))
    started = time.perf_counter()
    from_parent = node.GetTransformFromParent()
    per_point = np.array([from_parent.TransformPoint(tuple(p)) for p in pts_lps * F]) * F
    loop = time.perf_counter() - started
    np.testing.assert_allclose(field.displacement_mm.reshape(-1, 3), per_point - pts_lps, atol=1e-4)
    np.testing.assert_allclose(field.displacement_mm, u, atol=1e-3)
    print(f"node_to_transform on {grid.size}: {vectorized:.3f} s vectorized, {loop:.3f} s per-voxel loop")
    assert loop / vectorized > 5, (loop, vectorized)


def test_segmentation_and_label_map_masks(scene, oblique_grid):
    volume = mrml.image_to_volume_node(Image(np.zeros(oblique_grid.shape, np.float32), oblique_grid), scene, "ref")
    labels = np.zeros(oblique_grid.shape, np.float32)
    labels[4:9, 3:12, 5:10] = 1
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    mrml.image_to_volume_node(Image(labels, oblique_grid), scene, "labels", label_node)
    np.testing.assert_array_equal(mrml.mask_node_to_image(label_node, volume).array, labels)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation)
    kinds = lambda: sorted(scene.GetNthNode(n).GetClassName() for n in range(scene.GetNumberOfNodes())  # noqa: E731
                           if not scene.GetNthNode(n).IsA("vtkMRMLSubjectHierarchyNode"))
    before = kinds()
    mask = mrml.mask_node_to_image(segmentation, volume)
    assert kinds() == before   # the temporary label map (and its display, colours) removed
    assert mask.grid.same_as(oblique_grid, tol=1e-4)
    np.testing.assert_array_equal(mask.array > 0, labels > 0)


def test_checkerboard_alternates_fixed_and_registered_tiles(scene, oblique_grid):
    fixed = mrml.image_to_volume_node(Image(np.zeros(oblique_grid.shape, np.float32), oblique_grid), scene, "f")
    ramp = mrml.image_to_volume_node(Image(np.indices(oblique_grid.shape)[2].astype(np.float32), oblique_grid), scene, "x")
    board = slicer.util.arrayFromVolume(mrml.checkerboard_node(fixed, ramp, tile_voxels=4))
    assert np.all(board[0, 0, 1:4] > 0) and np.all(board[0, 0, 4:8] == 0)   # registered tile, then fixed tile
    assert np.all(board[0, 4, 1:4] == 0) and np.all(board[4, 4, 1:4] > 0)


def test_slicer_convention_from_parent_plus_5mm_right(scene):
    """SLICER.md's checked fact: u = +5 mm along R stored "from parent" maps (12,22,32) to (17,22,32)."""
    grid = Grid((40, 40, 40), (1, 1, 1), (-30, -30, 0))
    u = np.zeros((*grid.shape, 3), np.float32)
    u[..., 0] = -5.0  # +5 mm along R is -5 mm along L
    node = mrml.transform_to_node(DisplacementField(u, grid), scene, "r5", grid)
    np.testing.assert_allclose(mrml.transform_ras_points(node, np.array([[12.0, 22.0, 32.0]]))[0], [17, 22, 32], atol=1e-6)


def _small_pair():
    t1, t2 = (downsample(sources.spm_avg152(m), 2) for m in ("T1", "T2"))
    direction = RigidTransform([0.12, 0.05, -0.1]).rotation_matrix()
    spacing = np.array([4.0, 3.5, 4.5])
    size = (44, 54, 38)
    center = t1.grid.center_physical()
    fixed = warp(t1, Grid(size, spacing, center - direction @ (spacing * (np.array(size) - 1) / 2), direction), None)
    true = RigidTransform([0.06, -0.05, 0.08], [6.0, -4.0, 3.0], center)
    moving = warp(t2, t2.grid, true.inverse())
    return fixed, moving, true


def test_register_nodes_mi_end_to_end(scene):
    fixed, moving, true = _small_pair()
    fixed_node = mrml.image_to_volume_node(fixed, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    before = {n.GetID(): (slicer.util.arrayFromVolume(n).copy(), mrml.ijk_to_ras_matrix(mrml.grid_from_volume_node(n)))
              for n in (fixed_node, moving_node)}
    out_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "registered")
    nodes = mrml.register_nodes(fixed_node, moving_node, "nmi", "cpu", output_volume_node=out_volume,
                                options={"levels": "2,1", "max_points": 20000})
    result = nodes["result"]
    assert rigid_errors(result.transform, true)["t_norm_mm"] < 2.0
    # transform node acts on RAS points as the library transform on LPS points
    pts = fixed.grid.corners_physical()
    np.testing.assert_allclose(mrml.transform_ras_points(nodes["transform"], pts * F) * F,
                               result.transform.transform_points(pts), atol=1e-5)
    assert moving_node.GetTransformNodeID() == nodes["transform"].GetID()
    # the resampled volume lies on the fixed grid
    out = mrml.volume_node_to_image(nodes["volume"])
    assert out.grid.same_as(fixed.grid, tol=1e-6)
    np.testing.assert_allclose(out.array, result.warped.array)
    # inputs: voxels and geometry byte-identical
    for n in (fixed_node, moving_node):
        arr, m = before[n.GetID()]
        assert np.array_equal(slicer.util.arrayFromVolume(n), arr)
        assert np.array_equal(mrml.ijk_to_ras_matrix(mrml.grid_from_volume_node(n)), m)
    table = nodes["report"].GetTable()
    keys = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    assert "nmi64_after" in keys and "seconds_total" in keys


def test_failed_or_cancelled_run_adds_no_nodes(scene):
    fixed, moving, _ = _small_pair()
    fixed_node = mrml.image_to_volume_node(fixed, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    n_nodes = scene.GetNumberOfNodes()
    from DeepRegistrationLib.core.errors import Cancelled
    from DeepRegistrationLib.core.progress import Progress
    with pytest.raises(Cancelled):
        mrml.register_nodes(fixed_node, moving_node, "nmi", "cpu", progress=Progress(should_cancel=lambda: True))
    with pytest.raises(InputError, match="unknown device"):
        mrml.register_nodes(fixed_node, moving_node, "nmi", "tpu")
    assert scene.GetNumberOfNodes() == n_nodes
    assert moving_node.GetTransformNodeID() is None


def test_jacobian_volume_and_plot_chart(scene, oblique_grid):
    det = Image(np.linspace(-0.5, 2.5, oblique_grid.num_voxels, dtype=np.float32).reshape(oblique_grid.shape), oblique_grid)
    node = mrml.jacobian_to_volume_node(det, scene, "jac")
    display = node.GetDisplayNode()
    # [-w, 2] over 256 entries of width w = 2/255: entry 0 (folding) is [-w, 0), det J = 1 is in entry 128
    w = 2.0 / 255
    assert display.GetWindow() == pytest.approx(2.0 + w) and display.GetLevel() == pytest.approx(1.0 - w / 2)
    assert display.GetInterpolate() == 0
    color = scene.GetNodeByID(display.GetColorNodeID())
    rgba = [0.0] * 4
    color.GetColor(0, rgba)
    assert rgba[:3] == [0.0, 1.0, 0.0]  # folding highlighted
    color.GetColor(128, rgba)
    assert min(rgba[:3]) > 0.95  # white at det J = 1
    chart, table = mrml.plot_chart_from_columns(scene, "response", "tx_mm", {"NMI": [1, 2, 3], "CNN": [3, 2, 1]},
                                                [-1, 0, 1])
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert table.GetTable().GetNumberOfColumns() == 3
    again, same = mrml.plot_chart_from_columns(scene, "response", "tx_mm", {"NMI": [1, 2, 3, 4], "CNN": [3, 2, 1, 0]},
                                               [-1, 0, 1, 2], chart=chart)
    assert again is chart and same is table and table.GetNumberOfRows() == 4
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2


def test_response_charts_from_the_response_command_peak_at_alignment(scene, tmp_path):
    """The panel's path: ``deepregistration response`` writes a CSV, the charts are made from it."""
    from DeepRegistrationLib.cli import main
    t1, t2 = (downsample(sources.spm_avg152(m), 2) for m in ("T1", "T2"))
    write_image(t1, tmp_path / "t1.nrrd")
    write_image(t2, tmp_path / "t2.nrrd")
    assert main(["response", str(tmp_path / "t1.nrrd"), str(tmp_path / "t2.nrrd"), "--metric", "nmi", "--patches", "32",
                 "--steps", "9", "--device", "cpu", "--out", str(tmp_path / "r.csv")]) == 0
    charts = mrml.response_charts_from_csv(scene, tmp_path / "r.csv")
    assert len(charts) == 6
    series = charts[0].GetNthPlotSeriesNode(0)
    table = series.GetTableNode().GetTable()
    x = [table.GetValue(r, 0).ToDouble() for r in range(table.GetNumberOfRows())]
    y = [table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())]
    assert x[int(np.argmax(y))] == pytest.approx(0.0)  # NMI peaks at the true (identity) pose in tx


def test_background_register_then_nodes_from_outputs(scene, tmp_path):
    """The GUI path: a background `deepregistration register --progress-json`, then its files into MRML."""
    from DeepRegistrationLib.background import BackgroundCommand
    fixed, moving, true = _small_pair()
    write_image(fixed, tmp_path / "fixed.nrrd")
    write_image(moving, tmp_path / "moving.nrrd")
    fixed_node = mrml.image_to_volume_node(fixed, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    job = BackgroundCommand(["register", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", "--method", "nmi",
                             "--device", "cpu", "--progress-json", "--param", "levels=2,1",
                             "--param", "max_points=20000", "--out-transform", tmp_path / "T.h5",
                             "--out-volume", tmp_path / "W.nrrd", "--report", tmp_path / "R.json"]).start()
    assert job.wait(300) == 0, job.error_message()
    events = job.events()
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    done = [e for e in events if e["event"] == "done"][0]
    out_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "registered")
    nodes = mrml.nodes_from_outputs(scene, fixed_node, moving_node, "nmi", done["outputs"], None, out_volume)
    transform = mrml.node_to_transform(nodes["transform"])
    assert rigid_errors(RigidTransform.from_matrix4(transform.matrix4()), true)["t_norm_mm"] < 2.0
    assert mrml.volume_node_to_image(nodes["volume"]).grid.same_as(fixed.grid, tol=1e-4)


def test_background_cancel_writes_nothing(tmp_path):
    from DeepRegistrationLib.background import BackgroundCommand
    fixed, moving, _ = _small_pair()
    write_image(fixed, tmp_path / "fixed.nrrd")
    write_image(moving, tmp_path / "moving.nrrd")
    job = BackgroundCommand(["register", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", "--device", "cpu",
                             "--progress-json", "--out-transform", tmp_path / "T.h5", "--report",
                             tmp_path / "R.json"]).start()
    import time
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["event"] == "progress" for e in job.events()):
        time.sleep(0.2)
    job.cancel()
    assert job.returncode is not None and job.returncode != 0
    assert not (tmp_path / "T.h5").exists() and not (tmp_path / "R.json").exists()


def test_patch_preview_node(scene):
    t1, t2 = (downsample(sources.spm_avg152(m), 1) for m in ("T1", "T2"))
    node = mrml.patch_preview_node(mrml.image_to_volume_node(t1, scene, "t1"), mrml.image_to_volume_node(t2, scene, "t2"),
                                   pairs=3, patch_size=9, spacing_mm=4.0)
    montage = slicer.util.arrayFromVolume(node)
    assert montage.shape == (1, 6 * (9 + 2), 9 + 2 + 9)
    assert montage.max() > 0.2  # real patches, intensities normalized to [0, 1]
    assert montage.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("method, options", [
    ("learned-metric", {"patches": 32, "max_evaluations": 40}),
    ("diffeo", {"iterations": 0}),      # the network alone: instance optimization has its own tests
    ("dirnet", {"iterations": 0}),
    ("deepsim", {"iterations": 0}),
    ("deepsim-rigid", {"max_evaluations": 40}),
])
def test_register_nodes_every_learned_method(scene, method, options):
    """Every bundled method on a small pair gives the documented nodes with the fixed geometry."""
    fixed, moving, _ = _small_pair()
    fixed_node = mrml.image_to_volume_node(fixed, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving if method in RIGID else warp(fixed, fixed.grid, None), scene,
                                            "moving")
    moving_before = slicer.util.arrayFromVolume(moving_node).copy()
    out_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "registered")
    nodes = mrml.register_nodes(fixed_node, moving_node, method, "cpu", output_volume_node=out_volume, options=options)
    assert mrml.volume_node_to_image(nodes["volume"]).grid.same_as(fixed.grid, tol=1e-6)
    assert np.array_equal(slicer.util.arrayFromVolume(moving_node), moving_before)
    pts = fixed.grid.index_to_physical(np.array([[10, 12, 9], [30, 20, 25]]))
    np.testing.assert_allclose(mrml.transform_ras_points(nodes["transform"], pts * F) * F,
                               nodes["result"].transform.transform_points(pts), atol=0.05)
    if method in RIGID:
        assert nodes["transform"].IsLinear() and "jacobian" not in nodes
    else:
        assert not nodes["transform"].IsLinear()
        assert {"jacobian", "report"} <= set(nodes)
        assert ("inverse" in nodes) == (method == "diffeo")  # only the diffeomorphic method has an exact inverse
        det = slicer.util.arrayFromVolume(nodes["jacobian"])
        assert det.shape == fixed.grid.shape and det.min() > 0
