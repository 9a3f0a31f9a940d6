"""Render the panel's visual-QA views offscreen with Slicer's own slice-view pipeline (slicer-core).

A slice view here is what Slicer's Red/Yellow/Green views are made of, without Qt: a
``vtkMRMLSliceLogic`` (reslicing and blending the layers of the slice composite node, with each
volume's display node: colour table, window/level, opacity) and a displayable-manager group from
``vtkMRMLSliceViewDisplayableManagerFactory`` (transform grids, colour legends), drawn into an
offscreen VTK render window (EGL or OSMesa). trame-slicer drives the same classes for its browser
views; this is written from Slicer's classes, not copied.

    python scripts/render_slice_views.py docs/screenshots

writes the fused, checkerboard (before and after), Jacobian-overlay (with its legend) and
deformation-grid views of a diffeomorphic registration (bundled model) of the SPM avg152 T1 to a
smoothly deformed copy of itself (the template the model was partly trained on: a demonstration of
the views, not an evaluation).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

MANAGERS = ("vtkMRMLTransformsDisplayableManager2D", "vtkMRMLColorLegendDisplayableManager")


def mrml_application(scene=None):
    """A scene with the application logic and the default colour tables (Grey, ...) a slice view needs."""
    scene = scene or slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    return scene, app, colors


class OffscreenSliceView:
    """One slice view (``name`` as in Slicer: Red, Yellow, Green) rendered into an offscreen window."""

    def __init__(self, scene, app, name: str = "Red", size=(512, 512), orientation: str = "Axial"):
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app)
        for manager in MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app)
        self.logic.SetMRMLScene(scene)
        if app.GetSliceLogics() is None:
            app.SetSliceLogics(vtk.vtkCollection())
        app.GetSliceLogics().AddItem(self.logic)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation)
        self.managers.SetMRMLDisplayableNode(self.node)

        # the resliced, blended layers as an RGBA image behind everything the managers draw
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(self.mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(actor)
        self.logic.ResizeSliceNode(*size)
        self.scene = scene

    def show(self, background=None, foreground=None, opacity: float = 0.5, offset_mm: float = None):
        """Layers as ``slicer.util.setSliceViewerLayers`` sets them, fitted to the background."""
        composite = self.logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)
        self.logic.FitSliceToAll()
        if offset_mm is not None:
            self.logic.SetSliceOffset(offset_mm)
        return self

    def render(self) -> np.ndarray:
        """The view as an (rows, columns, 3) uint8 array, top row first."""
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        # the managers update from the whole scene, as after loading one: the colour legend's manager finds
        # this view's slice composite node then, and (re)shows a legend when its node changes
        self.scene.StartState(self.scene.BatchProcessState)
        self.scene.EndState(self.scene.BatchProcessState)
        legends = self.scene.GetNodesByClass("vtkMRMLColorLegendDisplayNode")
        for index in range(legends.GetNumberOfItems()):
            legends.GetItemAsObject(index).Modified()
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        columns, rows, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])

    def save(self, path) -> Path:
        pixels = self.render()
        rows, columns, _ = pixels.shape
        image = vtk.vtkImageData()
        image.SetDimensions(columns, rows, 1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(pixels[::-1].reshape(-1, 3), deep=True))
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputData(image)
        writer.Write()
        return Path(path)


def render_registration_views(out_dir) -> dict:
    """The four QA views of a real registration (bundled diffeo model) as PNG files in ``out_dir``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "DeepRegistration"))
    from DeepRegistrationLib import mrml
    from DeepRegistrationLib.core.warp import warp
    from DeepRegistrationLib.data import sources
    from DeepRegistrationLib.data.synthetic import smooth_random_field

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scene, app, colors = mrml_application()
    fixed = sources.spm_avg152("T1")
    moving = warp(fixed, fixed.grid, smooth_random_field(fixed.grid, np.random.default_rng(0), 4.0))
    fixed_node = mrml.image_to_volume_node(fixed, scene, "fixed T1")
    moving_node = mrml.image_to_volume_node(moving, scene, "deformed T1")
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "registered")
    nodes = mrml.register_nodes(fixed_node, moving_node, "diffeo", "cpu", output_volume_node=output)

    view = OffscreenSliceView(scene, app, "Red", (512, 512))
    paths = {}
    paths["fused"] = view.show(fixed_node, nodes["volume"], 0.5).save(out_dir / "qa_fused.png")
    before = mrml.checkerboard_node(fixed_node, moving_node, tile_voxels=12)
    paths["checkerboard before"] = view.show(before).save(out_dir / "qa_checkerboard_before.png")
    board = mrml.checkerboard_node(fixed_node, nodes["volume"], tile_voxels=12)
    paths["checkerboard"] = view.show(board).save(out_dir / "qa_checkerboard.png")
    legend = colors.AddDefaultColorLegendDisplayNode(nodes["jacobian"])
    legend.SetTitleText("det J")
    paths["jacobian"] = view.show(fixed_node, nodes["jacobian"], 0.6).save(out_dir / "qa_jacobian.png")
    legend.SetVisibility(False)
    mrml.show_deformation_grid(nodes["transform"], fixed_node)
    moving_node.SetAndObserveTransformNodeID(None)
    paths["grid"] = view.show(fixed_node).save(out_dir / "qa_deformation_grid.png")
    return paths


if __name__ == "__main__":
    for name, path in render_registration_views(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots").items():
        print(f"{name}: {path}")
