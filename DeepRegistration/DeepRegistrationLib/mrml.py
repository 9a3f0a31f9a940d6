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

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .core.errors import InputError
from .core.image import Grid, Image
from .core.transforms import DisplacementField, LinearTransform, AffineTransform

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
    node.SetNamesInitialised(True)
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

def register_nodes(fixed_node, moving_node, method: str = "mi", device: str = "auto", progress=None,
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
    from .api import register

    scene = fixed_node.GetScene()
    fixed = volume_node_to_image(fixed_node, "fixed volume")
    moving = volume_node_to_image(moving_node, "moving volume")
    initial = node_to_transform(initial_transform_node, fixed.grid) if initial_transform_node is not None else None
    masks = [volume_node_to_image(n, "mask") if n is not None else None for n in (fixed_mask_node, moving_mask_node)]
    result = register(fixed, moving, method, device, progress, initial, masks[0], masks[1], **(options or {}))

    base = moving_node.GetName()
    nodes = {"transform": transform_to_node(result.transform, scene, f"{base} to {fixed_node.GetName()} ({method})",
                                            fixed.grid, output_transform_node)}
    if place_moving_under_transform:
        moving_node.SetAndObserveTransformNodeID(nodes["transform"].GetID())
    if output_volume_node is not None:
        nodes["volume"] = image_to_volume_node(result.warped, scene, f"{base} registered", output_volume_node)
    if result.inverse is not None and not isinstance(result.transform, LinearTransform):
        nodes["inverse"] = transform_to_node(result.inverse, scene, f"{base} inverse ({method})", moving.grid)
    if result.jacobian is not None:
        nodes["jacobian"] = jacobian_to_volume_node(result.jacobian, scene, f"{base} Jacobian determinant")
    nodes["report"] = report_to_table_node(result.report, scene, f"{base} registration report ({method})")
    nodes["result"] = result
    return nodes
