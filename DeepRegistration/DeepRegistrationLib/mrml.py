"""MRML adapter: Slicer nodes to and from library images and transforms, and registration on nodes.

The only module of the library that imports Slicer, and only its Qt-free core (MRML classes and
``slicer.util``), so it runs in Slicer and under the ``slicer-core`` wheel alike.

Slicer works in RAS, the library in LPS: ``F = diag(-1, -1, 1, 1)`` converts either way.
- ``IJKToRAS = F · [direction · spacing | origin]_LPS``.
- A library transform maps fixed (LPS) points to moving points, which Slicer calls "from parent":
  linear ``toParent_RAS = inverse(F · T_LPS · F)``; a displacement field goes into a grid transform
  set with ``SetAndObserveTransformFromParent`` (RAS geometry and RAS vectors).
"""
from __future__ import annotations

import json

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .core.errors import InputError
from .core.image import Grid, Image
from .core.io import read_image
from .core.transforms import AffineTransform, DisplacementField, LinearTransform, RigidTransform, read_transform

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the same flip for points (x, y negated)
F_XY = np.array([-1.0, -1.0, 1.0])


def _vtk_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def _numpy_matrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# --- volumes -----------------------------------------------------------------------------------

def grid_from_volume_node(node) -> Grid:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    lps = LPS_RAS @ _numpy_matrix(m)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    dims = node.GetImageData().GetDimensions()
    return Grid(dims, spacing, lps[:3, 3], lps[:3, :3] / spacing)


def volume_node_to_image(node, name: str = "volume") -> Image:
    """A scalar volume node as a library image (LPS geometry, z-first float32 copy of the voxels)."""
    if node is None or node.GetImageData() is None:
        raise InputError(f"{name}: no volume selected, or the volume has no voxels")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError(f"{name}: a scalar volume is needed, got {node.GetImageData().GetNumberOfScalarComponents()} "
                         "components per voxel")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    return Image(array, grid_from_volume_node(node))


def ijk_to_ras_matrix(grid: Grid) -> np.ndarray:
    return LPS_RAS @ grid.index_to_physical_matrix()


def image_to_volume_node(image: Image, scene, name: str, node=None):
    """A new (or the given) scalar volume node holding ``image`` with its geometry."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_matrix(image.grid)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image.array))
    node.CreateDefaultDisplayNodes()
    return node


# --- transforms ---------------------------------------------------------------------------------

def _grid_transform_ras(field: DisplacementField):
    """A vtkOrientedGridTransform with the field's RAS geometry and RAS displacement vectors."""
    grid = field.grid
    data = vtk.vtkImageData()
    data.SetDimensions(*grid.size)
    data.SetOrigin(*(LPS_RAS[:3, :3] @ grid.origin))
    data.SetSpacing(*grid.spacing)
    vectors_ras = (field.displacement_mm.reshape(-1, 3) * np.array([-1.0, -1.0, 1.0])).astype(np.float64)
    array = numpy_support.numpy_to_vtk(vectors_ras, deep=True, array_type=vtk.VTK_DOUBLE)
    array.SetNumberOfComponents(3)
    data.GetPointData().SetScalars(array)
    direction = np.eye(4)
    direction[:3, :3] = LPS_RAS[:3, :3] @ grid.direction
    transform = slicer.vtkOrientedGridTransform()
    transform.SetGridDirectionMatrix(_vtk_matrix(direction))
    transform.SetDisplacementGridData(data)
    transform.SetInterpolationModeToLinear()
    return transform


def transform_to_node(transform, scene, name: str, reference_grid: Grid = None, node=None):
    """A transform node holding the library transform (fixed -> moving) in Slicer's "from parent" sense.

    Linear transforms become matrices; anything else is sampled as a displacement field on
    ``reference_grid`` (the fixed grid) and stored as a grid transform.
    """
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTransformNode", scene.GenerateUniqueName(name))
    if isinstance(transform, LinearTransform):
        to_parent_ras = np.linalg.inv(LPS_RAS @ transform.matrix4() @ LPS_RAS)
        node.SetMatrixTransformToParent(_vtk_matrix(to_parent_ras))
        return node
    if not isinstance(transform, DisplacementField) or (reference_grid is not None
                                                         and not transform.grid.same_as(reference_grid)):
        if reference_grid is None:
            raise InputError("a non-linear transform needs a reference grid to be stored in Slicer")
        transform = DisplacementField.from_transform(transform, reference_grid)
    node.SetAndObserveTransformFromParent(_grid_transform_ras(transform))
    return node


def node_to_transform(node, reference_grid: Grid = None):
    """A transform node (e.g. an initial transform) as a library transform mapping fixed to moving (LPS).

    Linear nodes give an :class:`AffineTransform`; others are sampled on ``reference_grid``.
    """
    if node.IsLinear():
        m = vtk.vtkMatrix4x4()
        node.GetMatrixTransformToParent(m)
        return AffineTransform(LPS_RAS @ np.linalg.inv(_numpy_matrix(m)) @ LPS_RAS)
    if reference_grid is None:
        raise InputError("a non-linear initial transform needs the fixed volume's grid")
    pts_lps = reference_grid.index_to_physical(np.stack(np.meshgrid(
        *[np.arange(s) for s in reversed(reference_grid.size)], indexing="ij")[::-1], -1).reshape(-1, 3))
    mapped = transform_ras_points(node, pts_lps * F_XY) * F_XY
    return DisplacementField((mapped - pts_lps).reshape(*reference_grid.shape, 3).astype(np.float32), reference_grid)


def transform_ras_points(node, points_ras: np.ndarray) -> np.ndarray:
    """Where the node maps RAS points "from parent" (what resampling a child volume reads): one VTK call
    for all points (``vtkAbstractTransform.TransformPoints``), not one Python call per point."""
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_ras, dtype=np.float64), deep=True))
    mapped = vtk.vtkPoints()
    mapped.SetDataTypeToDouble()
    node.GetTransformFromParent().TransformPoints(source, mapped)
    return numpy_support.vtk_to_numpy(mapped.GetData()).astype(np.float64).reshape(-1, 3)


# --- tables, colours, plots ---------------------------------------------------------------------

def _flatten(report: dict, prefix: str = "") -> list:
    rows = []
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            for n, item in enumerate(value):
                rows += _flatten(item, f"{name}[{n}].")
        elif isinstance(value, float):
            rows.append((name, f"{value:.6g}"))
        else:
            rows.append((name, str(value)))
    return rows


def report_to_table_node(report: dict, scene, name: str, node=None):
    """A two-column (quantity, value) table of the report."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    table.Initialize()
    keys, values = vtk.vtkStringArray(), vtk.vtkStringArray()
    keys.SetName("quantity")
    values.SetName("value")
    for k, v in _flatten(report):
        keys.InsertNextValue(k)
        values.InsertNextValue(v)
    table.AddColumn(keys)
    table.AddColumn(values)
    node.Modified()
    return node


JACOBIAN_COLORS = "DeepRegistration Jacobian determinant"
#: entries of the Jacobian colour table; entry 0 is folding, entries 1.. span det J in [0, 2]
JACOBIAN_ENTRIES = 256
FOLDING_RGB = (0.0, 1.0, 0.0)


def jacobian_color_node(scene):
    """The diverging colour table for det J, one per scene (reused): blue (compression) - white (1) -
    red (expansion) on [0, 2], and below it one entry in bright green for det J < 0 (folding).

    With the window/level of :func:`jacobian_window_level` each entry spans ``w = 2 / (n - 1)``: entry 0
    covers [-w, 0) and everything clamped below it, entry i >= 1 covers [(i - 1) w, i w); so no positive
    det J is painted as folding."""
    node = scene.GetFirstNodeByName(JACOBIAN_COLORS)
    if node is not None and node.IsA("vtkMRMLColorTableNode"):
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", JACOBIAN_COLORS)
    node.SetTypeToUser()
    node.SetNumberOfColors(JACOBIAN_ENTRIES)
    width = 2.0 / (JACOBIAN_ENTRIES - 1)
    node.SetColor(0, "folding (det J < 0)", *FOLDING_RGB, 1.0)
    for i in range(1, JACOBIAN_ENTRIES):
        t = (i - 0.5) * width / 2.0                    # det J / 2 at the entry's centre
        rgb = (2 * t, 2 * t, 1.0) if t < 0.5 else (1.0, 2 * (1 - t), 2 * (1 - t))
        node.SetColor(i, f"{2 * t:.3f}", *rgb, 1.0)
    node.SetAttribute("Category", "DeepRegistration")
    return node


def jacobian_window_level() -> tuple:
    """(window, level) mapping [-w, 2] onto the table's entries (see :func:`jacobian_color_node`)."""
    width = 2.0 / (JACOBIAN_ENTRIES - 1)
    return 2.0 + width, (2.0 - width) / 2.0


def jacobian_to_volume_node(jacobian: Image, scene, name: str):
    """The Jacobian determinant map, displayed with the scene's Jacobian colour table centred on 1."""
    node = image_to_volume_node(jacobian, scene, name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(jacobian_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*jacobian_window_level())
    display.SetInterpolate(False)
    return node


def plot_chart_from_columns(scene, name: str, x_name: str, columns: dict, x_values, y_title: str = "", chart=None):
    """A table with ``x_values`` and each ``columns[label]``, one plot series per label, in one chart.

    Given the ``chart`` of an earlier call, its table is refilled in place and its series are reused, so
    updating a live curve adds no node."""
    array = np.column_stack([np.asarray(x_values, dtype=np.float64)] +
                            [np.asarray(v, dtype=np.float64) for v in columns.values()])
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())] if chart else []
    if series and [s.GetYColumnName() for s in series] == list(columns):
        table = series[0].GetTableNode()
        slicer.util.updateTableFromArray(table, array, [x_name, *columns.keys()])
        return chart, table
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} table"))
    slicer.util.updateTableFromArray(table, array, [x_name, *columns.keys()])
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_name)
    chart.SetYAxisTitle(y_title)
    for label in columns:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(label))
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(x_name)
        series.SetYColumnName(label)
        series.SetPlotType(series.PlotTypeScatter)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart, table


def response_charts_from_csv(scene, path) -> list:
    """One chart per rigid parameter from ``deepregistration response``'s CSV (metric, parameter, unit,
    offset, value), each curve scaled to [0, 1] so that the metrics' shapes compare on one axis."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    charts = []
    for parameter in dict.fromkeys(r["parameter"] for r in rows):
        mine = [r for r in rows if r["parameter"] == parameter]
        curves, offsets = {}, None
        for metric in dict.fromkeys(r["metric"] for r in mine):
            values = np.array([float(r["value"]) for r in mine if r["metric"] == metric])
            span = values.max() - values.min()
            curves[metric] = (values - values.min()) / span if span > 0 else np.zeros_like(values)
            offsets = [float(r["offset"]) for r in mine if r["metric"] == metric]
        chart, _ = plot_chart_from_columns(scene, f"response {parameter}", f"{parameter} ({mine[0]['unit']})",
                                           curves, offsets, "metric (scaled to [0, 1])")
        charts.append(chart)
    return charts


# --- masks, QA views ------------------------------------------------------------------------------

def _node_ids(scene) -> set:
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def mask_node_to_image(node, reference_volume_node) -> Image:
    """A mask from a label map / scalar volume (non-zero voxels) or a segmentation (its visible segments,
    exported on the reference volume's grid)."""
    if node.IsA("vtkMRMLSegmentationNode"):
        scene = node.GetScene()
        before = _node_ids(scene)
        labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask export")
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
                    node, labels, reference_volume_node):
                raise InputError(f"mask: the segmentation {node.GetName()!r} could not be exported")
            image = volume_node_to_image(labels, "mask")
        finally:   # the label map and what the export made for it (display, storage, colour table)
            for made in _node_ids(scene) - before:
                if not scene.GetNodeByID(made).IsA("vtkMRMLSubjectHierarchyNode"):
                    scene.RemoveNode(scene.GetNodeByID(made))
        return image
    return volume_node_to_image(node, "mask")


def checkerboard_node(fixed_node, registered_node, tile_voxels: int = 8, node=None):
    """Tiles of the fixed and the registered volume (both on the fixed grid), each scaled to [0, 1]."""
    fixed = volume_node_to_image(fixed_node, "fixed volume")
    registered = volume_node_to_image(registered_node, "registered volume")
    if not registered.grid.same_as(fixed.grid, tol=1e-4):
        raise InputError("the registered volume is not on the fixed volume's grid")
    k, j, i = np.indices(fixed.grid.shape, sparse=True)
    tiles = ((k // tile_voxels + j // tile_voxels + i // tile_voxels) % 2).astype(bool)

    def scaled(a):
        return (a - a.min()) / max(float(a.max() - a.min()), 1e-12)

    board = fixed.with_array(np.where(tiles, scaled(fixed.array), scaled(registered.array)).astype(np.float32))
    return image_to_volume_node(board, fixed_node.GetScene(), "checkerboard", node)


def show_deformation_grid(transform_node, region_volume_node=None, spacing_mm: float = 8.0):
    """Show a non-linear transform as a deformed grid in the slice views (over the region volume)."""
    transform_node.CreateDefaultDisplayNodes()
    display = transform_node.GetDisplayNode()
    display.SetVisualizationMode(display.VIS_MODE_GRID)
    display.SetGridSpacingMm(spacing_mm)
    if region_volume_node is not None:
        display.SetAndObserveRegionNode(region_volume_node)
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    return display


# --- registration on nodes ----------------------------------------------------------------------

def register_nodes(fixed_node, moving_node, method: str = "nmi", device: str = "auto", progress=None,
                   initial_transform_node=None, fixed_mask_node=None, moving_mask_node=None,
                   output_transform_node=None, output_volume_node=None, options: dict = None,
                   place_moving_under_transform: bool = True) -> dict:
    """Register two volume nodes and write the results into MRML; returns the nodes made.

    Outputs: a transform node (the moving volume is placed under it), the resampled moving volume
    (when ``output_volume_node`` is given or the method is deformable), the inverse transform and the
    Jacobian map for deformable methods, and a report table. Input nodes are never modified, and
    nothing is added to the scene when the registration fails or is cancelled. Placing the moving
    volume under the result (for live display) changes only which transform it observes.
    """
    from .registration import register
    scene = fixed_node.GetScene()
    fixed = volume_node_to_image(fixed_node, "fixed volume")
    moving = volume_node_to_image(moving_node, "moving volume")
    initial = node_to_transform(initial_transform_node, fixed.grid) if initial_transform_node is not None else None
    masks = [volume_node_to_image(n, "mask") if n is not None else None for n in (fixed_mask_node, moving_mask_node)]
    result = register(fixed, moving, method, device, progress, initial, masks[0], masks[1], **(options or {}))

    nodes = result_to_nodes(scene, fixed_node, moving_node, method, result.transform, result.report, fixed.grid,
                            moving.grid, result.warped, result.inverse, result.jacobian, output_transform_node,
                            output_volume_node, place_moving_under_transform)
    nodes["result"] = result
    return nodes


def result_to_nodes(scene, fixed_node, moving_node, method: str, transform, report: dict, fixed_grid: Grid,
                    moving_grid: Grid, warped: Image = None, inverse=None, jacobian: Image = None,
                    output_transform_node=None, output_volume_node=None, place_moving_under_transform=True) -> dict:
    """The MRML nodes of a registration result (see :func:`register_nodes`)."""
    base = moving_node.GetName()
    nodes = {"transform": transform_to_node(transform, scene, f"{base} to {fixed_node.GetName()} ({method})",
                                            fixed_grid, output_transform_node)}
    nodes["transform"].SetNodeReferenceID("fixedVolume", fixed_node.GetID())
    nodes["transform"].SetNodeReferenceID("movingVolume", moving_node.GetID())
    if place_moving_under_transform:
        moving_node.SetAndObserveTransformNodeID(nodes["transform"].GetID())
    nodes["stages"] = stage_transform_nodes(scene, method, report, nodes["transform"],
                                            f"{base} to {fixed_node.GetName()}")
    nodes["confidence"] = confidences(method, report)
    if output_volume_node is not None and warped is not None:
        nodes["volume"] = image_to_volume_node(warped, scene, f"{base} registered", output_volume_node)
    if inverse is not None and not isinstance(transform, LinearTransform):
        nodes["inverse"] = transform_to_node(inverse, scene, f"{base} inverse ({method})", moving_grid)
    if jacobian is not None:
        nodes["jacobian"] = jacobian_to_volume_node(jacobian, scene, f"{base} Jacobian determinant")
    nodes["report"] = report_to_table_node(report, scene, f"{base} registration report ({method})")
    return nodes


#: the output transform's references to a pipeline's earlier stage transforms, in order
STAGE_REFERENCE = "stageTransform"


def stage_transform_nodes(scene, method: str, report: dict, transform_node, name: str) -> list:
    """Every stage's transform of a pipeline (``method`` with '+'): the earlier stages' linear transforms as
    nodes referenced by the output transform (``STAGE_REFERENCE``, reused by the next run into it), then
    the output transform itself (the last stage's, the composite of all). One stage: ``[transform_node]``."""
    stages = []
    if "+" in method:
        for i, entry in enumerate(report["stages"][:-1]):
            stages.append(transform_to_node(AffineTransform(np.array(entry["matrix_lps"])), scene,
                                            f"{name} stage {i + 1} ({entry['method']})",
                                            node=transform_node.GetNthNodeReference(STAGE_REFERENCE, i)))
    transform_node.RemoveNodeReferenceIDs(STAGE_REFERENCE)
    for node in stages:
        transform_node.AddNodeReferenceID(STAGE_REFERENCE, node.GetID())
    return stages + [transform_node]


def confidences(method: str, report: dict) -> list:
    """The confidence of a rigid or affine result (``rigid/confidence.py``), one entry per stage that has one:
    ``{"method", "uncertainty_mm", "uncertainty_deg", "flagged", "reasons"}``."""
    entries = [(s["method"], s["report"]) for s in report["stages"]] if "+" in method else [(method, report)]
    keys = ("uncertainty_mm", "uncertainty_deg", "flagged", "reasons")
    return [{"method": name, **{k: r["confidence"][k] for k in keys}} for name, r in entries if "confidence" in r]


def nodes_from_outputs(scene, fixed_node, moving_node, method: str, outputs: dict, output_transform_node=None,
                       output_volume_node=None) -> dict:
    """Nodes from the files a background ``deepregistration register`` run wrote (``outputs``: kind -> path)."""
    transform = read_transform(outputs["transform"])
    report = json.loads(open(outputs["report"]).read())
    fixed_grid, moving_grid = grid_from_volume_node(fixed_node), grid_from_volume_node(moving_node)
    warped = read_image(outputs["volume"], "registered volume") if "volume" in outputs else None
    inverse = read_transform(outputs["inverse"]) if "inverse" in outputs else None
    jacobian = read_image(outputs["jacobian"], "Jacobian", require_volume=False) if "jacobian" in outputs else None
    return result_to_nodes(scene, fixed_node, moving_node, method, transform, report, fixed_grid, moving_grid, warped,
                           inverse, jacobian, output_transform_node, output_volume_node)


PATCH_PREVIEW_NAME = "patch pairs (positives, then negatives)"


def patch_preview_image(fixed: Image, moving: Image, pairs: int = 6, patch_size: int = 17, spacing_mm: float = 2.0,
                        dither_variance_mm2: float = 0.0, seed: int = 0) -> Image:
    """A montage of sampled training patch pairs (middle slices): row r shows pair r as [fixed | moving];
    the first ``pairs`` rows are positives (corresponding), the rest negatives. No MRML: it can run in a
    worker thread."""
    import torch
    from .rigid.metric_patches import PatchPairSampler, SamplerSettings, prepare_level
    fixed, moving = prepare_level(fixed, spacing_mm), prepare_level(moving, spacing_mm)
    sampler = PatchPairSampler(SamplerSettings(patch_size, spacing_mm, dither_variance_mm2, 1,
                                               min_negative_distance_mm=4 * patch_size * spacing_mm / 3))
    generator = torch.Generator().manual_seed(seed)
    identity = RigidTransform()
    batch = torch.cat([sampler.positives(fixed, moving, identity, pairs, generator),
                       sampler.negatives(fixed, moving, identity, pairs, generator)])
    mid = patch_size // 2
    rows = [torch.cat([pair[0, mid], torch.zeros(patch_size, 2), pair[1, mid]], dim=1) for pair in batch]
    gap = torch.zeros(2, rows[0].shape[1])
    montage = torch.cat([torch.cat([r, gap]) for r in rows]).numpy()[None].astype(np.float32)
    grid = Grid((montage.shape[2], montage.shape[1], 1), (spacing_mm, spacing_mm, spacing_mm), (0.0, 0.0, 0.0))
    return Image(montage, grid)


def patch_preview_node(fixed_node, moving_node, scene=None, **settings):
    """:func:`patch_preview_image` of two volume nodes, as a new volume node."""
    image = patch_preview_image(volume_node_to_image(fixed_node, "fixed volume"),
                                volume_node_to_image(moving_node, "moving volume"), **settings)
    return image_to_volume_node(image, scene or fixed_node.GetScene(), PATCH_PREVIEW_NAME)
