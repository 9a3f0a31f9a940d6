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
import torch
import vtk
from vtk.util import numpy_support

from .api import register
from .core.device import resolve_device
from .core.errors import InputError
from .core.image import Grid, Image
from .core.io import read_image
from .core.transforms import AffineTransform, DisplacementField, LinearTransform, RigidTransform, read_transform
from .rigid.response_functions import PARAMETERS, UNITS, build_metrics, response_functions
from .rigid.metric_patches import PatchPairSampler, SamplerSettings, prepare_level

LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    from_parent = node.GetTransformFromParent()
    pts_lps = reference_grid.index_to_physical(np.stack(np.meshgrid(
        *[np.arange(s) for s in reversed(reference_grid.size)], indexing="ij")[::-1], -1).reshape(-1, 3))
    pts_ras = pts_lps * np.array([-1.0, -1.0, 1.0])
    mapped = np.array([from_parent.TransformPoint(tuple(p)) for p in pts_ras]) * np.array([-1.0, -1.0, 1.0])
    return DisplacementField((mapped - pts_lps).reshape(*reference_grid.shape, 3).astype(np.float32), reference_grid)


def transform_ras_points(node, points_ras: np.ndarray) -> np.ndarray:
    """Where the node maps RAS points "from parent" (what resampling a child volume reads)."""
    t = node.GetTransformFromParent()
    return np.array([t.TransformPoint(tuple(float(v) for v in p)) for p in points_ras])


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


def jacobian_color_node(scene, name: str = "JacobianDiverging"):
    """Diverging colour table for det J on [0, 2]: blue (compression) - white (1) - red (expansion);
    the lowest entry (det J <= 0, folding) is bright green so folded voxels stand out."""
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name))
    node.SetTypeToUser()
    n = 256
    node.SetNumberOfColors(n)
    for i in range(n):
        t = i / (n - 1)
        if t < 0.5:
            rgb = (2 * t, 2 * t, 1.0)
        else:
            rgb = (1.0, 2 * (1 - t), 2 * (1 - t))
        node.SetColor(i, f"{2 * t:.3f}", *rgb, 1.0)
    node.SetColor(0, "folding", 0.0, 1.0, 0.0, 1.0)
    return node


def jacobian_to_volume_node(jacobian: Image, scene, name: str):
    """The Jacobian determinant map, displayed with the diverging table centred on 1 (window 2, level 1)."""
    node = image_to_volume_node(jacobian, scene, name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(jacobian_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2.0, 1.0)
    return node


def plot_chart_from_columns(scene, name: str, x_name: str, columns: dict, x_values, y_title: str = ""):
    """A table with ``x_values`` and each ``columns[label]``, one plot series per label, in one chart."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} table"))
    array = np.column_stack([np.asarray(x_values, dtype=np.float64)] +
                            [np.asarray(v, dtype=np.float64) for v in columns.values()])
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
    if place_moving_under_transform:
        moving_node.SetAndObserveTransformNodeID(nodes["transform"].GetID())
    if output_volume_node is not None and warped is not None:
        nodes["volume"] = image_to_volume_node(warped, scene, f"{base} registered", output_volume_node)
    if inverse is not None and not isinstance(transform, LinearTransform):
        nodes["inverse"] = transform_to_node(inverse, scene, f"{base} inverse ({method})", moving_grid)
    if jacobian is not None:
        nodes["jacobian"] = jacobian_to_volume_node(jacobian, scene, f"{base} Jacobian determinant")
    nodes["report"] = report_to_table_node(report, scene, f"{base} registration report ({method})")
    return nodes


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


def response_chart_nodes(fixed_node, moving_node, transform_node=None, cnn_model: str = "", device: str = "auto",
                         patches: int = 64, steps: int = 21) -> list:
    """Response functions (Sedghi et al., Fig. 2) around the current pose as one plot chart per rigid
    parameter, with NMI and (given ``cnn_model``) every stage of the learned metric, each curve scaled
    to [0, 1] so that their shapes compare on one axis."""
    scene = fixed_node.GetScene()
    fixed = volume_node_to_image(fixed_node, "fixed volume")
    moving = volume_node_to_image(moving_node, "moving volume")
    center = fixed.grid.center_physical()
    pose = RigidTransform(center_mm=center)
    if transform_node is not None and transform_node.IsLinear():
        pose = RigidTransform.from_matrix4(node_to_transform(transform_node).matrix4(), center)
    device = resolve_device(device)
    metrics = build_metrics("nmi", fixed, moving, patches, device=device)
    if cnn_model:
        metrics += build_metrics(f"cnn:{cnn_model}", fixed, moving, patches, device=device)
    rows = response_functions(metrics, pose, steps=steps)
    charts = []
    for parameter in PARAMETERS:
        curves = {}
        offsets = None
        for metric in metrics:
            mine = [r for r in rows if r["parameter"] == parameter and r["metric"] == metric.label]
            values = np.array([r["value"] for r in mine])
            span = values.max() - values.min()
            curves[metric.label] = (values - values.min()) / span if span > 0 else np.zeros_like(values)
            offsets = [r["offset"] for r in mine]
        chart, _ = plot_chart_from_columns(scene, f"response {parameter}", f"{parameter} ({UNITS[parameter]})",
                                           curves, offsets, "metric (scaled to [0, 1])")
        charts.append(chart)
    return charts


def patch_preview_node(fixed_node, moving_node, scene=None, pairs: int = 6, patch_size: int = 17,
                       spacing_mm: float = 2.0, dither_variance_mm2: float = 0.0, seed: int = 0):
    """A montage volume of sampled training patch pairs (middle slices): row r shows pair r as
    [fixed | moving]; the first ``pairs`` rows are positives (corresponding), the rest negatives."""
    scene = scene or fixed_node.GetScene()
    fixed = prepare_level(volume_node_to_image(fixed_node, "fixed volume"), spacing_mm)
    moving = prepare_level(volume_node_to_image(moving_node, "moving volume"), spacing_mm)
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
    return image_to_volume_node(Image(montage, grid), scene, "patch pairs (positives, then negatives)")
