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
                                           ScriptedLoadableModuleTest)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode

from DeepRegistrationPanels.parameter_node_widget import ParameterNodeWidget
# Torch-free: the method specs are read before the dependencies are installed.
from DeepRegistrationLib.methods import PIPELINE_PRESETS, SEPARATOR, SPECS, pipeline_specs

PRESETS_DIR = os.path.join(os.path.dirname(__file__), "Resources", "Presets")
#: the output transform's attribute with the result's confidence (JSON list, one entry per rigid/affine stage)
CONFIDENCE_ATTRIBUTE = "DeepRegistration.confidence"


def modelStage(method: str):
    """The spec of the stage that takes the model (a pipeline has at most one), or None."""
    return next((spec for spec in pipeline_specs(method) if spec.model_kind), None)


def optionFields(method: str) -> list:
    """(key, option) for every option of a method; in a pipeline the key is 'STAGE.OPTION', the
    ``--param`` that goes to that stage only."""
    specs = pipeline_specs(method)
    if len(specs) == 1:
        return [(option.name, option) for option in specs[0].options]
    return [(f"{spec.name}.{option.name}", option) for spec in specs for option in spec.options]


class _LabelledMethod(enum.Enum):
    def label(self) -> str:
        """What the method combo box shows (Slicer's enum connector calls ``label``): the spec's label, for a
        pipeline its stages' labels without their parenthesis."""
        specs = pipeline_specs(self.value)
        return specs[0].label if len(specs) == 1 else " → ".join(spec.label.split(" (")[0] for spec in specs)


#: The registration methods, in the order of ``DeepRegistrationLib.methods.SPECS``, then the pipelines of
#: ``PIPELINE_PRESETS`` (one ``register`` call runs their stages in order, each from the one before).
Method = _LabelledMethod("Method", [(name.replace("-", "_").replace(SEPARATOR, "__"), name)
                                    for name in (*SPECS, *PIPELINE_PRESETS)])


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
            "Rigid (normalized mutual information, learned CNN metric of Sedghi et al. 2018, DeepSim), affine and "
            "deformable (diffeomorphic patch-wise, DIRNet, DeepSim U-Net) registration, alone or as a pipeline "
            "(rigid → affine → deformable in one run, each stage's transform added to the scene). The result "
            "transform maps fixed to moving points (Slicer's 'from parent'); the moving volume is placed under it. "
            "Rigid and affine results show their uncertainty and are flagged when likely wrong.")
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


class DeepRegistrationWidget(ParameterNodeWidget):
    def __init__(self, parent=None) -> None:
        ParameterNodeWidget.__init__(self, parent)
        self._lastNodes = {}
        self._lastFolder = ""
        self._optionWidgets = {}
        self._shownMethod = None
        self._shownOptions = None

    def createLogic(self):
        return DeepRegistrationLogic()

    def setup(self) -> None:
        ParameterNodeWidget.setup(self)
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

    def setParameterNode(self, inputParameterNode) -> None:
        self._shownMethod = self._shownOptions = None
        ParameterNodeWidget.setParameterNode(self, inputParameterNode)

    def updateGui(self, caller=None, event=None) -> None:
        """Enable what the parameters allow; rebuild the method's model list and options when it changed."""
        p = self._parameterNode
        specs = pipeline_specs(p.method.value)
        if self._shownMethod != p.method:
            self._shownMethod = p.method
            self._showModels(p.method.value)
        if self._shownOptions != (p.method, p.methodOptions):   # a new method or a preset, not our own edit
            self._showOptions(p.method.value)
        ready = bool(p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        self.ui.applyButton.enabled = ready or self._job is not None
        self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume") if ready else \
            _("Select two different volumes")
        self.ui.fixedMaskSelector.enabled = any("fixed" in spec.masks for spec in specs)
        self.ui.movingMaskSelector.enabled = any("moving" in spec.masks for spec in specs)
        self.ui.jacobianButton.enabled = "jacobian" in self._lastNodes
        self.ui.gridButton.enabled = "transform" in self._lastNodes and not self._lastNodes["transform"].IsLinear()
        self.ui.openFolderButton.enabled = bool(self._lastFolder and os.path.isdir(self._lastFolder))
        self._showConfidence()

    def _showConfidence(self) -> None:
        """The output transform's confidence (rigid and affine stages), in a warning style when flagged."""
        text, flagged, reasons = self.logic.confidenceText(self.logic.confidenceOf(self._parameterNode.outputTransform))
        self.ui.confidenceLabel.text = text
        self.ui.confidenceLabel.toolTip = reasons
        self.ui.confidenceLabel.styleSheet = "color: #c62828; font-weight: bold;" if flagged else ""

    def _showModels(self, method: str) -> None:
        """The method's models (a pipeline's: those of its stage that takes one); the parameter's model stays
        chosen if it is one of them or a model file."""
        combo, model, stage = self.ui.modelComboBox, self._parameterNode.model, modelStage(method)
        combo.blockSignals(True)
        combo.clear()
        for name in self.logic.modelsFor(method):
            combo.addItem(name)
        if stage and model and combo.findText(model) < 0 and os.path.isfile(model):
            combo.addItem(model)
        combo.currentIndex = max(combo.findText(model), 0) if combo.count else -1
        combo.blockSignals(False)
        combo.enabled = self.ui.loadModelButton.enabled = stage is not None
        self.onModelChanged()

    def onModelChanged(self, index=None) -> None:
        model = self.ui.modelComboBox.currentText
        if self._parameterNode and self._parameterNode.model != model:
            self._parameterNode.model = model
        self.ui.modelCardLabel.text = self.logic.modelCard(model) if model else ""

    def _showOptions(self, method: str) -> None:
        """One widget per option of the method's spec (a pipeline's: of each stage, as 'stage: option'), in the
        Advanced section, bound to ``methodOptions``."""
        layout = self.ui.advancedOptionsFrame.layout()
        while layout.rowCount():
            layout.removeRow(0)  # deletes the row's widgets
        self._optionWidgets = {}
        values = self.logic.optionValues(self._parameterNode)
        fields = optionFields(method)
        for key, option in fields:
            widget = self._optionWidget(key, option, values.get(key, option.default))
            widget.toolTip = option.help
            layout.addRow(key.replace("_", " ").replace(".", ": ") + ":", widget)
            self._optionWidgets[key] = widget
        if not fields:
            layout.addRow(qt.QLabel(_("This method has no options.")))
        self._shownOptions = (self._parameterNode.method, self._parameterNode.methodOptions)

    def _optionWidget(self, key: str, option, value):
        if option.choices:
            widget = qt.QComboBox()
            for choice in option.choices:
                widget.addItem(str(choice))
            widget.currentText = str(value)
            widget.connect("currentIndexChanged(int)", lambda i: self._setOption(key, widget.currentText))
        elif option.type == "bool":
            widget = qt.QCheckBox()
            widget.checked = bool(value)
            widget.connect("toggled(bool)", lambda v: self._setOption(key, v))
        elif option.type in ("int", "float") and value is not None:
            number = int if option.type == "int" else float
            widget = qt.QSpinBox() if option.type == "int" else qt.QDoubleSpinBox()
            widget.minimum = number(option.minimum if option.minimum is not None else -10**9)
            widget.maximum = number(option.maximum if option.maximum is not None else 10**9)
            widget.value = number(value)
            widget.connect("valueChanged(double)" if option.type == "float" else "valueChanged(int)",
                           lambda v: self._setOption(key, v))
        else:
            widget = qt.QLineEdit(",".join(map(str, value)) if isinstance(value, (list, tuple)) else
                                  ("" if value is None else str(value)))
            widget.placeholderText = _("default")
            widget.connect("editingFinished()", lambda: self._setOption(key, widget.text or None))
        return widget

    def _setOption(self, key: str, value) -> None:
        p = self._parameterNode
        values = self.logic.optionValues(p)
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
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
            self.stopJob()
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
            self.startPolling(self._poll, 250)

    def _poll(self) -> None:
        events, finished = self.readJob()
        for event in events:
            if event.get("event") == "progress":
                self.ui.progressBar.value = int(100 * event.get("fraction", 0))
                self.ui.statusLabel.text = event.get("message", "")
        if not finished:
            return
        job = self._job
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            if job.returncode != 0:
                raise RuntimeError(job.error_message())
            self._lastNodes = self.logic.finishBackgroundRegistration(job, self._parameterNode)
            stages = self._lastNodes["stages"]
            self.ui.statusLabel.text = _("Done.") if len(stages) == 1 else _(
                "Done. The transform of each stage: {names}.").format(names=", ".join(n.GetName() for n in stages))
            if self.jobWarnings:
                self.ui.statusLabel.text += " " + _("{count} warning(s): see the log.").format(
                    count=len(self.jobWarnings))
            self.ui.progressBar.value = 100
        self.stopJob()

    def stopJob(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self._lastFolder = self.logic.cleanupJob(self._job, self._parameterNode.keepTemporaryFiles
                                                     if self._parameterNode else False)
        self._job = None
        self.ui.applyButton.text = _("Apply")
        if self._parameterNode:
            self.updateGui()

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
            self.startPolling(self._pollResponse, 250)

    def _pollResponse(self) -> None:
        if not self.readJob()[1]:
            return
        with slicer.util.tryWithErrorDisplay(_("Response functions failed."), waitCursor=True):
            if self._job.returncode != 0:
                raise RuntimeError(self._job.error_message())
            self.logic.showChart(self.logic.responseCharts(self._job)[0])
            self.ui.statusLabel.text = _("Response functions: one chart per rigid parameter.")
        self.stopJob()


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
        spec = modelStage(method)
        if spec is None:
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
        """The options set in the panel for the current method (the others take the spec's defaults), keyed as
        :func:`optionFields` keys them."""
        method = parameterNode.method.value
        values = json.loads(parameterNode.methodOptions or "{}").get(method, {})
        known = {key for key, _option in optionFields(method)}
        return {k: v for k, v in values.items() if k in known}

    @staticmethod
    def checkOptions(method: str, options: dict) -> None:
        """Refuse (``InputError``) an option the method does not have or a value its spec does not accept."""
        from DeepRegistrationLib.core.errors import InputError
        fields = dict(optionFields(method))
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise InputError(f"--method {method}: unknown option(s) {', '.join(unknown)} (known: {', '.join(fields)})")
        for key, value in options.items():
            fields[key].convert(value, method)

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
        """Set the method (or pipeline), its model and options from a preset; the options are checked by the specs."""
        method = Method(preset["method"])
        DeepRegistrationLogic.checkOptions(method.value, preset.get("options", {}))
        stage = modelStage(method.value)
        p = parameterNode
        wasModifying = p.StartModify()
        p.method = method
        p.model = preset.get("model", stage.default_model if stage else "") or ""
        p.methodOptions = DeepRegistrationLogic.withOptionValues(p, preset.get("options", {}))
        p.EndModify(wasModifying)

    @staticmethod
    def savePreset(name: str, parameterNode, folder: str) -> str:
        """Write the current method (or pipeline), model and options as a preset JSON file; returns its path."""
        p = parameterNode
        preset = {"name": name, "method": p.method.value, "model": p.model,
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
        """Blocking registration on nodes (batch scripting): returns the nodes made (see mrml.register_nodes).
        ``method`` may be a pipeline ('nmi+nmi-affine+diffeo'); ``options`` as ``--param`` takes them."""
        from DeepRegistrationLib.mrml import register_nodes
        options = dict(options or {})
        if model:
            options["models"] = [model]
        nodes = register_nodes(fixedVolume, movingVolume, method, device, progress, initialTransform, fixedMask,
                               movingMask, outputTransform, outputVolume, options)
        self.storeConfidence(nodes["transform"], nodes["confidence"])
        return nodes

    # --- the confidence of rigid and affine results (torch-free: the panel reads it from the scene) ---

    @staticmethod
    def storeConfidence(transformNode, entries: list) -> None:
        """Put a result's confidence (``mrml.confidences``) on its transform, where the panel reads it (and the
        scene saves it); a result without one removes what an earlier run put there."""
        if entries:
            transformNode.SetAttribute(CONFIDENCE_ATTRIBUTE, json.dumps(entries))
        else:
            transformNode.RemoveAttribute(CONFIDENCE_ATTRIBUTE)

    @staticmethod
    def confidenceOf(transformNode) -> list:
        text = transformNode.GetAttribute(CONFIDENCE_ATTRIBUTE) if transformNode is not None else None
        return json.loads(text) if text else []

    @staticmethod
    def confidenceText(entries: list) -> tuple:
        """(text, flagged, reasons) of the confidence entries: 'uncertainty 0.42 mm / 0.31°' per rigid stage,
        'uncertainty 0.42 mm' per affine one; flagged when a stage is, with its reasons."""
        parts = [(f"{e['method']}: " if len(entries) > 1 else "")
                 + (_("uncertainty {mm:.2f} mm").format(mm=e["uncertainty_mm"]) if e["uncertainty_deg"] is None else
                    _("uncertainty {mm:.2f} mm / {deg:.2f}°").format(mm=e["uncertainty_mm"], deg=e["uncertainty_deg"]))
                 for e in entries]
        flagged = any(e["flagged"] for e in entries)
        reasons = "; ".join(f"{e['method']}: {r}" for e in entries for r in e["reasons"])
        text = "; ".join(parts)
        return (_("Likely failure: {text}").format(text=text) if flagged else text), flagged, reasons

    def startBackgroundRegistration(self, parameterNode):
        """Write the inputs to a temporary folder and start ``deepregistration register`` on them (a pipeline's
        stages in the same call). The moving volume's own parent transform, when it has one and no initial
        transform is chosen, is where the registration starts: the result replaces it, so it must include it."""
        from DeepRegistrationLib.background import CommandSequence
        p = parameterNode
        folder = tempfile.mkdtemp(prefix="DeepRegistration-")
        initial = p.initialTransform or p.movingVolume.GetParentTransformNode()
        job = CommandSequence([self.registrationArguments(p, folder, initial)], self.pythonSlicer(),
                              self.childEnvironment()).start()
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

    def registrationArguments(self, parameterNode, folder: str, initialTransformNode=None) -> list:
        """The ``deepregistration register`` command line of the parameters, inputs and outputs in ``folder``."""
        from DeepRegistrationLib.core.io import write_image
        from DeepRegistrationLib.core.transforms import write_transform
        from DeepRegistrationLib.mrml import mask_node_to_image, node_to_transform, volume_node_to_image
        p = parameterNode
        specs = pipeline_specs(p.method.value)
        fixed = volume_node_to_image(p.fixedVolume, "fixed volume")
        write_image(fixed, os.path.join(folder, "fixed.nrrd"))
        write_image(volume_node_to_image(p.movingVolume, "moving volume"), os.path.join(folder, "moving.nrrd"))
        initial = None
        if initialTransformNode is not None:
            initial = os.path.join(folder, "initial.h5")
            write_transform(node_to_transform(initialTransformNode, fixed.grid), initial)
        args = ["register", os.path.join(folder, "fixed.nrrd"), os.path.join(folder, "moving.nrrd"),
                "--method", p.method.value, "--device", p.device, "--progress-json",
                "--out-transform", os.path.join(folder, "transform.h5"),
                "--out-volume", os.path.join(folder, "registered.nrrd"),
                "--report", os.path.join(folder, "report.json")]
        last = specs[-1]   # a pipeline's last stage gives its transform (the composite) and inverse
        if last.deformable:
            args += ["--out-jacobian", os.path.join(folder, "jacobian.nrrd")]
        if last.inverse:
            args += ["--out-inverse", os.path.join(folder, "inverse.h5")]
        if initial:
            args += ["--initial-transform", initial]
        for mask, side in ((p.fixedMask, "fixed"), (p.movingMask, "moving")):
            if mask and any(side in spec.masks for spec in specs):   # a pipeline: to the stages that honour it
                path = os.path.join(folder, f"{side}-mask.nrrd")
                write_image(mask_node_to_image(mask, p.fixedVolume if side == "fixed" else p.movingVolume), path)
                args += [f"--{side}-mask", path]
        if p.model and modelStage(p.method.value):
            args += ["--model", p.model]
        for key, value in self.optionValues(p).items():
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
        self.storeConfidence(nodes["transform"], nodes["confidence"])
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
        stage = modelStage(p.method.value)
        if stage is not None and stage.name == "learned-metric" and p.model:
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
        """The panel lists every method by its label from the specs, then the pipelines."""
        widget = slicer.modules.deepregistration.widgetRepresentation().self()
        labels = [widget.ui.methodComboBox.itemText(i) for i in range(widget.ui.methodComboBox.count)]
        self.assertEqual(labels, [spec.label for spec in SPECS.values()]
                         + [Method(name).label() for name in PIPELINE_PRESETS])

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
