import os
import shutil
import tempfile
from typing import Annotated

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTransformNode

from DeepRegistrationLib.methods import SPECS

METHOD_NAMES = list(SPECS)
DEFORMABLE_METHODS = [name for name, spec in SPECS.items() if spec.deformable]
#: methods whose result comes with its inverse transform
INVERTIBLE_METHODS = [name for name, spec in SPECS.items() if spec.inverse and spec.deformable]


#
# DeepRegistration
#


class DeepRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Deep Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepRegistration developers"]
        self.parent.helpText = _(
            "Rigid (normalized mutual information, learned CNN metric of Sedghi et al. 2018, DeepSim) and deformable "
            "(diffeomorphic patch-wise, DIRNet, DeepSim U-Net) registration. The result transform maps fixed to "
            "moving points (Slicer's 'from parent'); the moving volume is placed under it.")
        self.parent.acknowledgementText = _(
            "Methods: Sedghi et al. 2018; de Vos et al. 2017; Czolbe et al. 2021; patch-wise diffeomorphic "
            "registration (LDDMM) thesis.")


#
# Parameters (saved with the scene)
#


@parameterNodeWrapper
class DeepRegistrationParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedMask: vtkMRMLScalarVolumeNode
    movingMask: vtkMRMLScalarVolumeNode
    initialTransform: vtkMRMLTransformNode
    method: Annotated[str, Choice(METHOD_NAMES)] = "nmi"
    model: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    histogramBins: Annotated[int, WithinRange(8, 256)] = 60
    pyramidLevels: str = "4,2,1"
    cnnPatches: Annotated[int, WithinRange(16, 4096)] = 128
    tileSize: Annotated[int, WithinRange(48, 512)] = 48
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    fusionOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# Widget
#


class DeepRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._lastNodes = {}

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepRegistrationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateModelCard)
        self.ui.fusionButton.connect("clicked(bool)", self.onShowFusion)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onShowCheckerboard)
        self.ui.jacobianButton.connect("clicked(bool)", self.onShowJacobian)
        self.ui.gridButton.connect("clicked(bool)", self.onShowGrid)
        self.ui.responseButton.connect("clicked(bool)", self.onResponseFunctions)
        self.ui.deviceLabel.text = self.logic.detectedDevices()
        self.initializeParameterNode()
        self.onMethodChanged()

    def cleanup(self) -> None:
        self.removeObservers()
        self._stopJob()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.applyButton.enabled = ready or self._job is not None
        self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume") if ready else \
            _("Select two different volumes")
        self.updateModelCard()

    def onMethodChanged(self, index=None) -> None:
        method = self.ui.methodComboBox.currentText
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItems(self.logic.availableModels(method))
        self.ui.modelComboBox.enabled = method != "nmi"
        self.ui.loadModelButton.enabled = method != "nmi"
        self.ui.nmiParametersCollapsibleButton.visible = method == "nmi"
        self.ui.cnnParametersCollapsibleButton.visible = method == "learned-metric"
        self.ui.deformableParametersCollapsibleButton.visible = method in DEFORMABLE_METHODS
        self.updateModelCard()

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Load model file"), "", "Model (*.pt)")
        if path:
            self.ui.modelComboBox.addItem(path)
            self.ui.modelComboBox.currentText = path

    def updateModelCard(self, index=None) -> None:
        p = self._parameterNode
        if not p or p.method == "nmi" or not self.ui.modelComboBox.currentText:
            self.ui.modelCardLabel.text = ""
            self.ui.modelWarningLabel.text = ""
            return
        card, warning = self.logic.modelCard(self.ui.modelComboBox.currentText, p.fixedVolume, p.movingVolume)
        self.ui.modelCardLabel.text = card
        self.ui.modelWarningLabel.text = warning

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._stopJob()
            self.ui.statusLabel.text = _("Cancelled; no output was added.")
            return
        with slicer.util.tryWithErrorDisplay(_("Registration could not start."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self._job = self.logic.startBackgroundRegistration(self._parameterNode)
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.value = 0
            self._timer = qt.QTimer()
            self._timer.timeout.connect(self._poll)
            self._timer.start(250)

    def _poll(self) -> None:
        job = self._job
        for event in job.events():
            if event.get("event") == "progress":
                self.ui.progressBar.value = int(100 * event.get("fraction", 0))
                self.ui.statusLabel.text = event.get("message", "")
            elif event.get("event") == "done":
                job.outputs = event.get("outputs", {})
        if job.running:
            return
        self._timer.stop()
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            if job.returncode != 0:
                raise RuntimeError(job.error_message())
            self._lastNodes = self.logic.finishBackgroundRegistration(job, self._parameterNode)
            self.ui.statusLabel.text = _("Done.")
            self.ui.progressBar.value = 100
        self._stopJob()

    def _stopJob(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self.logic.cleanupJob(self._job)
        self._job = None
        self.ui.applyButton.text = _("Apply")
        self._checkCanApply()

    def onShowFusion(self) -> None:
        p = self._parameterNode
        self.logic.showFusion(p.fixedVolume, p.outputVolume or p.movingVolume, p.fusionOpacity)

    def onShowCheckerboard(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Checkerboard failed."), waitCursor=True):
            self.logic.showCheckerboard(p.fixedVolume, p.outputVolume or p.movingVolume)

    def onShowJacobian(self) -> None:
        if "jacobian" in self._lastNodes:
            self.logic.showJacobian(self._parameterNode.fixedVolume, self._lastNodes["jacobian"])

    def onShowGrid(self) -> None:
        if "transform" in self._lastNodes:
            self.logic.showDeformationGrid(self._lastNodes["transform"])

    def onResponseFunctions(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Response functions failed."), waitCursor=True):
            self.logic.showResponseFunctions(p.fixedVolume, p.movingVolume, self._lastNodes.get("transform"),
                                             self.ui.modelComboBox.currentText if p.method == "learned-metric" else "")


#
# Logic (the batch-scripting API; works without the GUI)
#


class DeepRegistrationLogic(ScriptedLoadableModuleLogic):
    """Register, evaluate and display results on MRML nodes.

    Batch scripts call :meth:`process` (blocking). The GUI runs the same registration in a background
    process (:meth:`startBackgroundRegistration`) so that Slicer stays responsive.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DeepRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> bool:
        """torch through SlicerPyTorch, the rest from Resources/requirements.txt; on first use only."""
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("This module needs the PyTorch extension (SlicerPyTorch). Install it from "
                                       "the Extensions Manager and restart Slicer."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=">=2.0") is None:
                return False
        requirements = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        if hasattr(slicer, "packaging"):
            slicer.packaging.pip_ensure(slicer.packaging.load_requirements(requirements), requester="DeepRegistration")
        else:
            with open(requirements) as f:
                for line in f:
                    name = line.split("#")[0].strip()
                    if name and not slicer.util.pip_check(name):
                        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                                _("DeepRegistration needs the Python package '{name}'. Install it now?").format(name=name)):
                            return False
                        slicer.util.pip_install(name)
        try:
            import numpy  # noqa: F401
            import torch  # noqa: F401
        except (ImportError, RuntimeError) as err:
            message = str(err)
            if "numpy" in message.lower() or "_ARRAY_API" in message:
                slicer.util.errorDisplay(_(
                    "PyTorch and NumPy do not fit together (NumPy ABI mismatch: {message}). Reinstall PyTorch "
                    "from the PyTorch Util module so that it matches Slicer's NumPy.").format(message=message))
            else:
                slicer.util.errorDisplay(_("PyTorch cannot be imported: {message}").format(message=message))
            return False
        return True

    @staticmethod
    def detectedDevices() -> str:
        from DeepRegistrationLib.core.device import describe_devices
        return describe_devices()

    @staticmethod
    def availableModels(method: str) -> list:
        """Bundled models and the user's trained models (DeepMetricTraining saves there) for a method."""
        from DeepRegistrationLib.models.model_file import available_models, read_metadata
        kinds = {name: spec.model_kind for name, spec in SPECS.items() if spec.model_kind}
        if method not in kinds:
            return []
        return [n for n in available_models() if str(read_metadata(n).get("kind", "")) == kinds[method]]

    @staticmethod
    def modelCard(model: str, fixedNode=None, movingNode=None) -> tuple:
        """(card text, warning text) of a model for the chosen inputs."""
        from DeepRegistrationLib.models.model_file import read_metadata
        from DeepRegistrationLib.mrml import grid_from_volume_node
        meta = read_metadata(model)
        training = meta.get("training", {})
        card = (f"{meta.get('kind')}: {meta.get('architecture', {}).get('name', '')}\n"
                f"trained on: {training.get('data', training) if isinstance(training, dict) else training}\n"
                f"modalities: {meta.get('modalities', 'see training data')}\n"
                f"spacing: {meta.get('spacing_mm')} mm, patch: {meta.get('patch_size')}")
        warning = ""
        if fixedNode is not None:
            spacing = grid_from_volume_node(fixedNode).spacing
            model_spacing = meta.get("spacing_mm")
            if isinstance(model_spacing, (int, float)) and max(abs(s / model_spacing - 1) for s in spacing) > 0.5:
                warning = _("The fixed volume's spacing {s} mm differs much from the model's {m} mm; inputs will be "
                            "resampled.").format(s=[round(float(v), 2) for v in spacing], m=model_spacing)
        return card, warning

    @staticmethod
    def methodOptions(parameterNode) -> dict:
        """Method options from the parameter node (the presets shown in the panel)."""
        p = parameterNode
        if p.method == "nmi":
            return {"bins": p.histogramBins, "levels": p.pyramidLevels}
        if p.method == "learned-metric":
            return {"patches": p.cnnPatches}
        if p.method == "diffeo":
            return {"tile": p.tileSize}
        return {}

    def process(self, fixedVolume, movingVolume, method: str = "nmi", device: str = "auto", model: str = "",
                options: dict = None, initialTransform=None, fixedMask=None, movingMask=None, outputTransform=None,
                outputVolume=None, progress=None) -> dict:
        """Blocking registration on nodes (batch scripting): returns the nodes made (see mrml.register_nodes)."""
        from DeepRegistrationLib.mrml import register_nodes
        options = dict(options or {})
        if model:
            options["models"] = [model]
        return register_nodes(fixedVolume, movingVolume, method, device, progress, initialTransform, fixedMask,
                              movingMask, outputTransform, outputVolume, options)

    def startBackgroundRegistration(self, parameterNode):
        """Write the inputs to a temporary folder and start ``deepregistration register`` on them."""
        from DeepRegistrationLib.background import BackgroundCommand
        folder = tempfile.mkdtemp(prefix="DeepRegistration-")
        job = BackgroundCommand(self.registrationArguments(parameterNode, folder), shutil.which("PythonSlicer")).start()
        job.folder = folder
        job.outputs = {}
        return job

    def registrationArguments(self, parameterNode, folder: str) -> list:
        """The ``deepregistration register`` command line for the parameters, inputs written to ``folder``."""
        from DeepRegistrationLib.core.io import write_image
        from DeepRegistrationLib.core.transforms import write_transform
        from DeepRegistrationLib.mrml import node_to_transform, volume_node_to_image
        p = parameterNode
        fixed = volume_node_to_image(p.fixedVolume, "fixed volume")
        write_image(fixed, os.path.join(folder, "fixed.nrrd"))
        write_image(volume_node_to_image(p.movingVolume, "moving volume"), os.path.join(folder, "moving.nrrd"))
        args = ["register", os.path.join(folder, "fixed.nrrd"), os.path.join(folder, "moving.nrrd"),
                "--method", p.method, "--device", p.device, "--progress-json",
                "--out-transform", os.path.join(folder, "transform.h5"),
                "--out-volume", os.path.join(folder, "registered.nrrd"),
                "--report", os.path.join(folder, "report.json")]
        if p.method in DEFORMABLE_METHODS:
            args += ["--out-jacobian", os.path.join(folder, "jacobian.nrrd")]
        if p.method in INVERTIBLE_METHODS:
            args += ["--out-inverse", os.path.join(folder, "inverse.h5")]
        if p.initialTransform:
            write_transform(node_to_transform(p.initialTransform, fixed.grid), os.path.join(folder, "initial.h5"))
            args += ["--initial-transform", os.path.join(folder, "initial.h5")]
        for mask, flag in ((p.fixedMask, "--fixed-mask"), (p.movingMask, "--moving-mask")):
            if mask:
                path = os.path.join(folder, flag.strip("-") + ".nrrd")
                write_image(volume_node_to_image(mask, "mask"), path)
                args += [flag, path]
        model = self._modelChoice(p)
        if model:
            args += ["--model", model]
        for key, value in self.methodOptions(p).items():
            args += ["--param", f"{key}={value}"]
        return args

    @staticmethod
    def _modelChoice(parameterNode) -> str:
        return parameterNode.model if parameterNode.method != "nmi" else ""

    def finishBackgroundRegistration(self, job, parameterNode) -> dict:
        """Bring the finished run's files into the scene (nothing is added if they are incomplete)."""
        from DeepRegistrationLib.mrml import nodes_from_outputs
        p = parameterNode
        nodes = nodes_from_outputs(slicer.mrmlScene, p.fixedVolume, p.movingVolume, p.method, job.outputs,
                                   p.outputTransform, p.outputVolume)
        if not p.outputTransform:
            p.outputTransform = nodes["transform"]
        return nodes

    @staticmethod
    def cleanupJob(job) -> None:
        shutil.rmtree(getattr(job, "folder", ""), ignore_errors=True)

    # --- visual QA ---

    @staticmethod
    def showFusion(fixedVolume, movingVolume, opacity: float = 0.5) -> None:
        slicer.util.setSliceViewerLayers(background=fixedVolume, foreground=movingVolume,
                                         foregroundOpacity=opacity, fit=True)

    @staticmethod
    def showCheckerboard(fixedVolume, movingVolume):
        """A checkerboard volume of fixed and (resampled) moving on the fixed grid, shown alone."""
        import numpy as np
        from DeepRegistrationLib.core.warp import warp
        from DeepRegistrationLib.mrml import image_to_volume_node, node_to_transform, volume_node_to_image
        fixed = volume_node_to_image(fixedVolume, "fixed volume")
        moving = volume_node_to_image(movingVolume, "moving volume")
        transform = node_to_transform(movingVolume.GetParentTransformNode(), fixed.grid) \
            if movingVolume.GetParentTransformNode() else None
        onFixed = warp(moving, fixed.grid, transform)
        k, j, i = np.indices(fixed.grid.shape)
        tiles = ((k // 8 + j // 8 + i // 8) % 2).astype(bool)
        scale = lambda a: (a - a.min()) / max(float(a.max() - a.min()), 1e-12)  # noqa: E731
        board = fixed.with_array(np.where(tiles, scale(fixed.array), scale(onFixed.array)).astype(np.float32))
        node = image_to_volume_node(board, slicer.mrmlScene, "checkerboard")
        slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)
        return node

    @staticmethod
    def showJacobian(fixedVolume, jacobianVolume, opacity: float = 0.5) -> None:
        slicer.util.setSliceViewerLayers(background=fixedVolume, foreground=jacobianVolume,
                                         foregroundOpacity=opacity, fit=True)

    @staticmethod
    def showDeformationGrid(transformNode) -> None:
        transformNode.CreateDefaultDisplayNodes()
        display = transformNode.GetDisplayNode()
        display.SetVisibility2D(True)
        display.SetVisualizationMode(display.VIS_MODE_GRID)

    def showResponseFunctions(self, fixedVolume, movingVolume, transformNode=None, cnnModel: str = ""):
        """NMI (and the learned metric) versus each rigid parameter around the current pose, as plot charts."""
        from DeepRegistrationLib.mrml import response_chart_nodes
        charts = response_chart_nodes(fixedVolume, movingVolume, transformNode, cnnModel)
        self.showChart(charts[0])
        return charts

    @staticmethod
    def showChart(chartNode) -> None:
        """Show a plot chart in the layout where the Plots module is loaded (not in a bare MRML core)."""
        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if plots is not None:
            plots.logic().ShowChartInLayout(chartNode)


#
# Self-test (run inside Slicer)
#


class DeepRegistrationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RigidNMIRecoversKnownTransform()
        self.setUp()
        self.test_DeepSimDeformableGivesJacobianAndReport()

    def test_RigidNMIRecoversKnownTransform(self):
        """Register a misregistered T1/T2 sample pair with NMI and check the recovered transform."""
        from DeepRegistrationLib.commands.demo import make_misregistered_pair
        from DeepRegistrationLib.metrics.evaluation import rigid_errors
        from DeepRegistrationLib.mrml import image_to_volume_node
        self.delayDisplay("Loading sample data")
        fixed, moving, true = make_misregistered_pair(seed=3)
        fixedNode = image_to_volume_node(fixed, slicer.mrmlScene, "fixed T1")
        movingNode = image_to_volume_node(moving, slicer.mrmlScene, "moving T2")
        nodes = DeepRegistrationLogic().process(fixedNode, movingNode, "nmi", "auto")
        errors = rigid_errors(nodes["result"].transform, true)
        self.assertLess(errors["t_norm_mm"], 2.0)
        self.assertEqual(movingNode.GetTransformNodeID(), nodes["transform"].GetID())
        self.delayDisplay("Test passed")

    def test_DeepSimDeformableGivesJacobianAndReport(self):
        """Register a T1 to a smoothly deformed copy with the bundled DeepSim model; no folding expected."""
        import numpy as np
        from DeepRegistrationLib.core.warp import warp
        from DeepRegistrationLib.data import sources
        from DeepRegistrationLib.data.synthetic import smooth_random_field
        from DeepRegistrationLib.mrml import image_to_volume_node
        self.delayDisplay("Loading sample data")
        fixed = sources.spm_avg152("T1")
        moving = warp(fixed, fixed.grid, smooth_random_field(fixed.grid, np.random.default_rng(0), 4.0))
        fixedNode = image_to_volume_node(fixed, slicer.mrmlScene, "fixed T1")
        movingNode = image_to_volume_node(moving, slicer.mrmlScene, "deformed T1")
        nodes = DeepRegistrationLogic().process(fixedNode, movingNode, "deepsim", "auto")
        det = slicer.util.arrayFromVolume(nodes["jacobian"])
        self.assertEqual(det.shape, tuple(fixed.grid.shape))
        self.assertGreater(float(det.min()), 0.0)
        self.assertIsNotNone(nodes["report"])
        self.delayDisplay("Test passed")
