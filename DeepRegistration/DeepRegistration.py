import enum
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from typing import Annotated, Union

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode

# Torch-free: the method specs are read before the dependencies are installed.
from DeepRegistrationLib.methods import SPECS

#: the method that aligns rigidly before a deformable method when "rigid first" is on
RIGID_FIRST_METHOD = "nmi"
PRESETS_DIR = os.path.join(os.path.dirname(__file__), "Resources", "Presets")


class _LabelledMethod(enum.Enum):
    def label(self) -> str:
        """What the method combo box shows (Slicer's enum connector calls ``label``)."""
        return SPECS[self.value].label


#: The registration methods, in the order of ``DeepRegistrationLib.methods.SPECS``.
Method = _LabelledMethod("Method", [(name.replace("-", "_"), name) for name in SPECS])


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
    #: a label map (or any scalar volume: non-zero voxels) or a segmentation; a union of node classes must
    #: include None, or Slicer's UnionSerializer cannot store "no mask"
    fixedMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]
    initialTransform: vtkMRMLTransformNode
    method: Method = Method(next(iter(SPECS)))
    rigidFirst: bool = False
    #: the model name or file (the model combo box lists them; not bound: its items change with the method)
    model: str = ""
    #: JSON {method: {option: value}} of the options set in the Advanced section (its widgets follow each
    #: method's spec; options not set take the spec's defaults)
    methodOptions: str = "{}"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    keepTemporaryFiles: bool = False
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
        self._lastFolder = ""
        self._optionWidgets = {}
        self._shownMethod = None
        self._shownOptions = None

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
        self.ui.loadSampleDataButton.connect("clicked(bool)", self.onLoadSampleData)
        self.ui.presetComboBox.connect("activated(int)", self.onPresetChosen)
        self.ui.savePresetButton.connect("clicked(bool)", self.onSavePreset)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.openFolderButton.connect("clicked(bool)", self.onOpenFolder)
        self.ui.fusionButton.connect("clicked(bool)", self.onShowFusion)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onShowCheckerboard)
        self.ui.jacobianButton.connect("clicked(bool)", self.onShowJacobian)
        self.ui.gridButton.connect("clicked(bool)", self.onShowGrid)
        self.ui.responseButton.connect("clicked(bool)", self.onResponseFunctions)
        self.ui.deviceLabel.text = _("CUDA is used when PyTorch finds a GPU ('auto').")
        self._fillPresets()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._stopJob()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        self._shownMethod = self._shownOptions = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        """Enable what the parameters allow; rebuild the method's model list and options when it changed."""
        p = self._parameterNode
        spec = SPECS[p.method.value]
        if self._shownMethod != p.method:
            self._shownMethod = p.method
            self._showModels(spec)
        if self._shownOptions != (p.method, p.methodOptions):   # a new method or a preset, not our own edit
            self._showOptions(spec)
        ready = bool(p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.applyButton.enabled = ready or self._job is not None
        self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume") if ready else \
            _("Select two different volumes")
        self.ui.fixedMaskSelector.enabled = "fixed" in spec.masks
        self.ui.movingMaskSelector.enabled = "moving" in spec.masks
        self.ui.rigidFirstCheckBox.enabled = spec.deformable
        self.ui.jacobianButton.enabled = "jacobian" in self._lastNodes
        self.ui.gridButton.enabled = "transform" in self._lastNodes and not self._lastNodes["transform"].IsLinear()
        self.ui.openFolderButton.enabled = bool(self._lastFolder and os.path.isdir(self._lastFolder))

    def _showModels(self, spec) -> None:
        """The method's models; the parameter's model stays chosen if it is one of them or a model file."""
        combo, model = self.ui.modelComboBox, self._parameterNode.model
        combo.blockSignals(True)
        combo.clear()
        for name in self.logic.modelsFor(spec.name):
            combo.addItem(name)
        if spec.model_kind and model and combo.findText(model) < 0 and os.path.isfile(model):
            combo.addItem(model)
        combo.currentIndex = max(combo.findText(model), 0) if combo.count else -1
        combo.blockSignals(False)
        combo.enabled = self.ui.loadModelButton.enabled = spec.model_kind is not None
        self.onModelChanged()

    def onModelChanged(self, index=None) -> None:
        model = self.ui.modelComboBox.currentText
        if self._parameterNode and self._parameterNode.model != model:
            self._parameterNode.model = model
        self.ui.modelCardLabel.text = self.logic.modelCard(model) if model else ""

    def _showOptions(self, spec) -> None:
        """One widget per option of the method's spec, in the Advanced section, bound to ``methodOptions``."""
        layout = self.ui.advancedOptionsFrame.layout()
        while layout.rowCount():
            layout.removeRow(0)  # deletes the row's widgets
        self._optionWidgets = {}
        values = self.logic.optionValues(self._parameterNode)
        for option in spec.options:
            widget = self._optionWidget(option, values.get(option.name, option.default))
            widget.toolTip = option.help
            layout.addRow(option.name.replace("_", " ") + ":", widget)
            self._optionWidgets[option.name] = widget
        if not spec.options:
            layout.addRow(qt.QLabel(_("This method has no options.")))
        self._shownOptions = (self._parameterNode.method, self._parameterNode.methodOptions)

    def _optionWidget(self, option, value):
        if option.choices:
            widget = qt.QComboBox()
            for choice in option.choices:
                widget.addItem(str(choice))
            widget.currentText = str(value)
            widget.connect("currentIndexChanged(int)", lambda i, o=option: self._setOption(o, widget.currentText))
        elif option.type == "bool":
            widget = qt.QCheckBox()
            widget.checked = bool(value)
            widget.connect("toggled(bool)", lambda v, o=option: self._setOption(o, v))
        elif option.type in ("int", "float") and value is not None:
            number = int if option.type == "int" else float
            widget = qt.QSpinBox() if option.type == "int" else qt.QDoubleSpinBox()
            widget.minimum = number(option.minimum if option.minimum is not None else -10**9)
            widget.maximum = number(option.maximum if option.maximum is not None else 10**9)
            widget.value = number(value)
            widget.connect("valueChanged(double)" if option.type == "float" else "valueChanged(int)",
                           lambda v, o=option: self._setOption(o, v))
        else:
            widget = qt.QLineEdit(",".join(map(str, value)) if isinstance(value, (list, tuple)) else
                                  ("" if value is None else str(value)))
            widget.placeholderText = _("default")
            widget.connect("editingFinished()", lambda o=option, w=widget: self._setOption(o, w.text or None))
        return widget

    def _setOption(self, option, value) -> None:
        p = self._parameterNode
        values = self.logic.optionValues(p)
        if value is None:
            values.pop(option.name, None)
        else:
            values[option.name] = value
        options = self.logic.withOptionValues(p, values)
        self._shownOptions = (p.method, options)   # the widgets already show it
        p.methodOptions = options

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Load model file"), "", "Model (*.pt)")
        if path:
            self.ui.modelComboBox.addItem(path)
            self.ui.modelComboBox.currentText = path

    def onLoadSampleData(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Sample data could not be loaded."), waitCursor=True):
            fixed, moving = self.logic.loadSampleData()
            self._parameterNode.fixedVolume, self._parameterNode.movingVolume = fixed, moving

    def _fillPresets(self) -> None:
        self._presets = self.logic.presets()
        self.ui.presetComboBox.clear()
        self.ui.presetComboBox.addItem(_("(choose a preset)"))
        for name in self._presets:
            self.ui.presetComboBox.addItem(name)

    def onPresetChosen(self, index: int) -> None:
        name = self.ui.presetComboBox.itemText(index)
        if name in self._presets:
            self.logic.applyPreset(self._presets[name], self._parameterNode)

    def onSavePreset(self) -> None:
        name = qt.QInputDialog.getText(self.parent, _("Save preset"), _("Preset name:"))
        if name:
            with slicer.util.tryWithErrorDisplay(_("The preset could not be saved.")):
                self.logic.savePreset(name, self._parameterNode, self.logic.userPresetsDir())
                self._fillPresets()
                self.ui.presetComboBox.currentText = name

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._stopJob()
            self.ui.statusLabel.text = _("Cancelled; no output was added.")
            return
        with slicer.util.tryWithErrorDisplay(_("Registration could not start."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self._job = self.logic.startBackgroundRegistration(self._parameterNode)
            self.ui.logTextEdit.clear()
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self._job.note
            self._timer = qt.QTimer()
            self._timer.timeout.connect(self._poll)
            self._timer.start(250)

    def _poll(self) -> None:
        job = self._job
        finished = job.finished  # read before draining: every event of a finished job is then queued
        for event in job.events():
            if event.get("event") == "progress":
                self.ui.progressBar.value = int(100 * event.get("fraction", 0))
                self.ui.statusLabel.text = event.get("message", "")
        for line in job.new_log_lines():
            self.ui.logTextEdit.appendPlainText(line)
        if not finished:
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
            self._lastFolder = self.logic.cleanupJob(self._job, self._parameterNode.keepTemporaryFiles
                                                     if self._parameterNode else False)
        self._job = None
        self.ui.applyButton.text = _("Apply")
        if self._parameterNode:
            self._updateGui()

    def onOpenFolder(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._lastFolder))

    def onShowFusion(self) -> None:
        p = self._parameterNode
        self.logic.showFusion(p.fixedVolume, self._lastNodes.get("volume") or p.movingVolume, p.fusionOpacity)

    def onShowCheckerboard(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Checkerboard failed."), waitCursor=True):
            if "volume" not in self._lastNodes:
                raise ValueError(_("Register first: the checkerboard pairs the fixed volume with the registered one."))
            self.logic.showCheckerboard(p.fixedVolume, self._lastNodes["volume"])

    def onShowJacobian(self) -> None:
        self.logic.showJacobian(self._parameterNode.fixedVolume, self._lastNodes["jacobian"])

    def onShowGrid(self) -> None:
        self.logic.showDeformationGrid(self._lastNodes["transform"], self._parameterNode.fixedVolume)

    def onResponseFunctions(self) -> None:
        """Response functions run in the background like a registration; the charts come when it ends."""
        if self._job is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Response functions could not start."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self._job = self.logic.startResponseFunctions(self._parameterNode, self._lastNodes.get("transform"))
            self.ui.applyButton.text = _("Cancel")
            self.ui.statusLabel.text = _("Computing response functions...")
            self._timer = qt.QTimer()
            self._timer.timeout.connect(self._pollResponse)
            self._timer.start(250)

    def _pollResponse(self) -> None:
        if not self._job.finished:
            return
        self._timer.stop()
        with slicer.util.tryWithErrorDisplay(_("Response functions failed."), waitCursor=True):
            if self._job.returncode != 0:
                raise RuntimeError(self._job.error_message())
            self.logic.showChart(self.logic.responseCharts(self._job)[0])
            self.ui.statusLabel.text = _("Response functions: one chart per rigid parameter.")
        self._stopJob()


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

    # --- dependencies ---

    @staticmethod
    def missingRequirements(requirementsPath: str) -> list:
        """Names in a requirements file that are not installed (importlib.metadata; no slicer.packaging needed)."""
        missing = []
        with open(requirementsPath) as f:
            for line in f:
                name = line.split("#")[0].strip()
                if not name:
                    continue
                try:
                    importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    missing.append(name)
        return missing

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> bool:
        """torch through SlicerPyTorch, the rest from Resources/requirements.txt; on first use only.

        Slicer 5.12 and later: ``slicer.packaging.pip_ensure`` (confirmation and progress). Earlier
        releases have no ``slicer.packaging`` (and never had ``slicer.util.pip_check``): missing names are
        found with ``importlib.metadata`` and installed with ``slicer.util.pip_install``.
        """
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
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(packaging.load_requirements(requirements), prompt_install=askConfirmation,
                                 requester="DeepRegistration")
        else:
            missing = DeepRegistrationLogic.missingRequirements(requirements)
            if missing:
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                        _("DeepRegistration needs the Python packages {names}. Install them now?").format(
                            names=", ".join(missing))):
                    return False
                slicer.util.pip_install(missing)
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

    # --- methods, models, options, presets (torch-free) ---

    @staticmethod
    def modelsFor(method: str) -> list:
        """The method's bundled default model, then the user's trained models of its kind once PyTorch is loaded
        (their metadata is read with torch; the panel never imports it before the dependencies are ensured)."""
        spec = SPECS[method]
        if spec.model_kind is None:
            return []
        models = [spec.default_model] if spec.default_model else []
        if "torch" in sys.modules:
            from DeepRegistrationLib.models.model_file import available_models, read_metadata
            models += [n for n in available_models()
                       if n not in models and str(read_metadata(n).get("kind", "")) == spec.model_kind]
        return models

    @staticmethod
    def modelCard(model: str) -> str:
        """What the model was trained on, once PyTorch is loaded (empty before)."""
        if "torch" not in sys.modules:
            return ""
        from DeepRegistrationLib.models.model_file import read_metadata
        meta = read_metadata(model)
        training = meta.get("training", {})
        return (f"{meta.get('kind')}: {meta.get('architecture', {}).get('name', '')}\n"
                f"trained on: {training.get('data', training) if isinstance(training, dict) else training}\n"
                f"spacing: {meta.get('spacing_mm')} mm, patch: {meta.get('patch_size')}")

    @staticmethod
    def optionValues(parameterNode) -> dict:
        """The options set in the panel for the current method (the others take the spec's defaults)."""
        method = parameterNode.method.value
        values = json.loads(parameterNode.methodOptions or "{}").get(method, {})
        known = {o.name for o in SPECS[method].options}
        return {k: v for k, v in values.items() if k in known}

    @staticmethod
    def withOptionValues(parameterNode, values: dict) -> str:
        """``methodOptions`` with the current method's options replaced by ``values``."""
        options = json.loads(parameterNode.methodOptions or "{}")
        options[parameterNode.method.value] = values
        return json.dumps(options, sort_keys=True)

    @staticmethod
    def presets(folders: list = None) -> dict:
        """Name -> preset, from the bundled presets and the user's (``*.json``; later folders win)."""
        out = {}
        for folder in folders or [PRESETS_DIR, DeepRegistrationLogic.userPresetsDir()]:
            if os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    if name.endswith(".json"):
                        with open(os.path.join(folder, name), encoding="utf-8") as f:
                            preset = json.load(f)
                        out[preset["name"]] = preset
        return out

    @staticmethod
    def userPresetsDir() -> str:
        from DeepRegistrationLib.data.sources import cache_dir
        return str(cache_dir() / "presets")

    @staticmethod
    def applyPreset(preset: dict, parameterNode) -> None:
        """Set the method, its model and options, and rigid-first from a preset; the options are checked by the spec."""
        spec = SPECS[preset["method"]]
        spec.parse_options(preset.get("options", {}))
        p = parameterNode
        wasModifying = p.StartModify()
        p.method = Method(spec.name)
        p.rigidFirst = bool(preset.get("rigidFirst", False)) and spec.deformable
        p.model = preset.get("model", spec.default_model or "")
        p.methodOptions = DeepRegistrationLogic.withOptionValues(p, preset.get("options", {}))
        p.EndModify(wasModifying)

    @staticmethod
    def savePreset(name: str, parameterNode, folder: str) -> str:
        """Write the current method, model, options and rigid-first as a preset JSON file; returns its path."""
        p = parameterNode
        preset = {"name": name, "method": p.method.value, "rigidFirst": p.rigidFirst, "model": p.model,
                  "options": DeepRegistrationLogic.optionValues(p)}
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "".join(c if c.isalnum() else "_" for c in name) + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(preset, f, indent=2, ensure_ascii=False)
        return path

    @staticmethod
    def loadSampleData() -> tuple:
        """Slicer's sample brain MR pair (MRBrainTumor1 as fixed, MRBrainTumor2 as moving), through SampleData."""
        import SampleData
        return SampleData.downloadSample("MRBrainTumor1"), SampleData.downloadSample("MRBrainTumor2")

    # --- registration ---

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
        """Write the inputs to a temporary folder and start ``deepregistration register`` on them (after an NMI
        stage when ``rigidFirst``). The moving volume's own parent transform, when it has one and no initial
        transform is chosen, is where the registration starts: the result replaces it, so it must include it."""
        from DeepRegistrationLib.background import CommandSequence
        p = parameterNode
        folder = tempfile.mkdtemp(prefix="DeepRegistration-")
        initial = p.initialTransform or p.movingVolume.GetParentTransformNode()
        stages = self.registrationStages(p, folder, initial)
        job = CommandSequence(stages, self.pythonSlicer(), self.childEnvironment()).start()
        job.folder = folder
        job.note = "" if p.initialTransform or initial is None else _(
            "Starting from the moving volume's transform '{name}'; the result will replace it.").format(
                name=initial.GetName())
        return job

    @staticmethod
    def pythonSlicer() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def childEnvironment() -> dict:
        """Slicer's startup environment (not the running application's ``os.environ``)."""
        return slicer.util.startupEnvironment() if hasattr(slicer, "app") else dict(os.environ)

    def registrationStages(self, parameterNode, folder: str, initialTransformNode=None) -> list:
        """The ``deepregistration register`` command lines, inputs written to ``folder``: one stage, or an NMI
        stage then the chosen method started from its result (``rigidFirst``)."""
        from DeepRegistrationLib.core.io import write_image
        from DeepRegistrationLib.core.transforms import write_transform
        from DeepRegistrationLib.mrml import mask_node_to_image, node_to_transform, volume_node_to_image
        p = parameterNode
        spec = SPECS[p.method.value]
        fixed = volume_node_to_image(p.fixedVolume, "fixed volume")
        write_image(fixed, os.path.join(folder, "fixed.nrrd"))
        write_image(volume_node_to_image(p.movingVolume, "moving volume"), os.path.join(folder, "moving.nrrd"))
        initial = None
        if initialTransformNode is not None:
            initial = os.path.join(folder, "initial.h5")
            write_transform(node_to_transform(initialTransformNode, fixed.grid), initial)
        masks = {}
        for mask, side in ((p.fixedMask, "fixed"), (p.movingMask, "moving")):
            if mask and side in spec.masks:
                masks[side] = os.path.join(folder, f"{side}-mask.nrrd")
                write_image(mask_node_to_image(mask, p.fixedVolume if side == "fixed" else p.movingVolume),
                            masks[side])
        stages = []
        if p.rigidFirst and spec.deformable:
            rigid = os.path.join(folder, "rigid")
            os.makedirs(rigid)
            stages.append(self._registerArguments(SPECS[RIGID_FIRST_METHOD], folder, rigid, initial, masks, "", {},
                                                  p.device))
            initial = os.path.join(rigid, "transform.h5")
        stages.append(self._registerArguments(spec, folder, folder, initial, masks, p.model,
                                              self.optionValues(p), p.device))
        return stages

    @staticmethod
    def _registerArguments(spec, inputs: str, out: str, initial, masks: dict, model: str, options: dict,
                           device: str) -> list:
        args = ["register", os.path.join(inputs, "fixed.nrrd"), os.path.join(inputs, "moving.nrrd"),
                "--method", spec.name, "--device", device, "--progress-json",
                "--out-transform", os.path.join(out, "transform.h5"),
                "--out-volume", os.path.join(out, "registered.nrrd"),
                "--report", os.path.join(out, "report.json")]
        if spec.deformable:
            args += ["--out-jacobian", os.path.join(out, "jacobian.nrrd")]
        if spec.inverse:
            args += ["--out-inverse", os.path.join(out, "inverse.h5")]
        if initial:
            args += ["--initial-transform", initial]
        for side, path in masks.items():
            if side in spec.masks:
                args += [f"--{side}-mask", path]
        if model and spec.model_kind:
            args += ["--model", model]
        for key, value in options.items():
            value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            args += ["--param", f"{key}={value}"]
        return args

    def finishBackgroundRegistration(self, job, parameterNode) -> dict:
        """Bring the finished run's files into the scene (nothing is added if they are incomplete)."""
        from DeepRegistrationLib.mrml import nodes_from_outputs
        p = parameterNode
        if not p.outputVolume:   # the registered volume: the checkerboard and fusion views show it
            p.outputVolume = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode", slicer.mrmlScene.GenerateUniqueName(f"{p.movingVolume.GetName()} registered"))
        nodes = nodes_from_outputs(slicer.mrmlScene, p.fixedVolume, p.movingVolume, p.method.value, job.outputs,
                                   p.outputTransform, p.outputVolume)
        if not p.outputTransform:
            p.outputTransform = nodes["transform"]
        return nodes

    @staticmethod
    def cleanupJob(job, keep: bool = False) -> str:
        """Delete the job's temporary folder unless ``keep``; returns the folder when kept ('' otherwise)."""
        folder = getattr(job, "folder", "")
        if keep:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        return ""

    # --- visual QA ---

    @staticmethod
    def showFusion(fixedVolume, movingVolume, opacity: float = 0.5) -> None:
        slicer.util.setSliceViewerLayers(background=fixedVolume, foreground=movingVolume,
                                         foregroundOpacity=opacity, fit=True)

    @staticmethod
    def showCheckerboard(fixedVolume, registeredVolume, tileVoxels: int = 8):
        """A checkerboard of the fixed and the registered volume (both on the fixed grid), shown alone."""
        from DeepRegistrationLib.mrml import checkerboard_node
        node = checkerboard_node(fixedVolume, registeredVolume, tileVoxels)
        slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)
        return node

    @staticmethod
    def showJacobian(fixedVolume, jacobianVolume, opacity: float = 0.5) -> None:
        """The Jacobian determinant over the fixed volume, with its colour legend."""
        slicer.util.setSliceViewerLayers(background=fixedVolume, foreground=jacobianVolume,
                                         foregroundOpacity=opacity, fit=True)
        colors = getattr(getattr(slicer, "modules", None), "colors", None)
        if colors is not None:
            colors.logic().AddDefaultColorLegendDisplayNode(jacobianVolume)

    @staticmethod
    def showDeformationGrid(transformNode, regionVolume=None) -> None:
        from DeepRegistrationLib.mrml import show_deformation_grid
        show_deformation_grid(transformNode, regionVolume)

    def startResponseFunctions(self, parameterNode, transformNode=None):
        """``deepregistration response`` on the inputs around the current pose, in the background."""
        from DeepRegistrationLib.background import CommandSequence
        from DeepRegistrationLib.core.io import write_image
        from DeepRegistrationLib.core.transforms import write_transform
        from DeepRegistrationLib.mrml import node_to_transform, volume_node_to_image
        p = parameterNode
        folder = tempfile.mkdtemp(prefix="DeepRegistration-response-")
        for node, name in ((p.fixedVolume, "fixed"), (p.movingVolume, "moving")):
            write_image(volume_node_to_image(node, f"{name} volume"), os.path.join(folder, f"{name}.nrrd"))
        args = ["response", os.path.join(folder, "fixed.nrrd"), os.path.join(folder, "moving.nrrd"),
                "--metric", "nmi", "--device", p.device, "--out", os.path.join(folder, "response.csv")]
        if p.method.value == "learned-metric" and p.model:
            args += ["--metric", f"cnn:{p.model}"]
        if transformNode is not None and transformNode.IsLinear():
            write_transform(node_to_transform(transformNode), os.path.join(folder, "pose.h5"))
            args += ["--pose", os.path.join(folder, "pose.h5")]
        job = CommandSequence([args], self.pythonSlicer(), self.childEnvironment()).start()
        job.folder = folder
        job.note = ""
        return job

    @staticmethod
    def responseCharts(job) -> list:
        from DeepRegistrationLib.mrml import response_charts_from_csv
        return response_charts_from_csv(slicer.mrmlScene, os.path.join(job.folder, "response.csv"))

    @staticmethod
    def showChart(chartNode) -> None:
        """Show a plot chart in the layout where the Plots module is loaded (not in a bare MRML core)."""
        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if plots is not None:
            plots.logic().ShowChartInLayout(chartNode)


#
# Self-test (run inside Slicer: Developer Tools > Reload and Test, or ctest)
#


class DeepRegistrationTest(ScriptedLoadableModuleTest):
    """Runs in Slicer's test harness: dependencies are ensured first (in testing mode ``pip_ensure`` does not
    install); the data are Slicer's SampleData brain MR volumes, downloaded by SampleData as any test does."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PanelListsMethodsByLabel()
        if not DeepRegistrationLogic.ensureDependencies(askConfirmation=False):
            self.skipTest("PyTorch (SlicerPyTorch) is not installed")
        self.setUp()
        self.test_RigidNMIRecoversKnownShift()
        self.setUp()
        self.test_DeformableGivesJacobianAndReport()

    def test_PanelListsMethodsByLabel(self):
        """The panel lists every method by its label from the specs."""
        widget = slicer.modules.deepregistration.widgetRepresentation().self()
        labels = [widget.ui.methodComboBox.itemText(i) for i in range(widget.ui.methodComboBox.count)]
        self.assertEqual(labels, [spec.label for spec in SPECS.values()])

    def _moved(self, volume, shift_mm):
        """A copy of ``volume`` translated by ``shift_mm`` (RAS), hardened."""
        moved = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, volume, volume.GetName() + " moved")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode")
        matrix = vtk.vtkMatrix4x4()
        for axis, value in enumerate(shift_mm):
            matrix.SetElement(axis, 3, value)
        transform.SetMatrixTransformToParent(matrix)
        moved.SetAndObserveTransformNodeID(transform.GetID())
        slicer.vtkSlicerTransformLogic().hardenTransform(moved)
        return moved

    def test_RigidNMIRecoversKnownShift(self):
        import SampleData
        self.delayDisplay("Loading sample data")
        fixed = SampleData.downloadSample("MRHead")
        moving = self._moved(fixed, (6.0, -4.0, 3.0))
        nodes = DeepRegistrationLogic().process(fixed, moving, "nmi", "auto")
        matrix = vtk.vtkMatrix4x4()
        nodes["transform"].GetMatrixTransformToParent(matrix)
        recovered = [matrix.GetElement(axis, 3) for axis in range(3)]
        for got, expected in zip(recovered, (-6.0, 4.0, -3.0)):
            self.assertAlmostEqual(got, expected, delta=1.0)
        self.assertEqual(moving.GetTransformNodeID(), nodes["transform"].GetID())
        self.assertEqual(nodes["transform"].GetNodeReference("fixedVolume"), fixed)
        self.delayDisplay("Test passed")

    def test_DeformableGivesJacobianAndReport(self):
        import SampleData
        self.delayDisplay("Loading sample data")
        fixed = SampleData.downloadSample("MRHead")
        moving = self._moved(fixed, (2.0, 0.0, 0.0))
        nodes = DeepRegistrationLogic().process(fixed, moving, "deepsim", "auto")
        det = slicer.util.arrayFromVolume(nodes["jacobian"])
        self.assertEqual(det.shape, slicer.util.arrayFromVolume(fixed).shape)
        self.assertGreater(float(det.min()), 0.0)
        self.assertIsNotNone(nodes["report"])
        self.delayDisplay("Test passed")
