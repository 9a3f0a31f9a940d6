import json
import os
import shutil
import tempfile
import time
from typing import Annotated

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode

from DeepRegistrationPanels.parameter_node_widget import ParameterNodeWidget

NETWORKS = ["metric", "diffeo", "dirnet", "deepsim-features", "deepsim"]
COMMANDS = {"metric": "train-metric", "diffeo": "train-diffeo", "dirnet": "train-dirnet",
            "deepsim-features": "train-deepsim-features", "deepsim": "train-deepsim"}
SIMILARITIES = ["nmse", "mse", "lncc", "ncc", "ncc_sup", "deepsim"]
#: the similarities each registration network trains with, the first being its default
NETWORK_SIMILARITIES = {"diffeo": ["nmse", "mse", "lncc", "deepsim"], "deepsim": ["deepsim", "mse", "ncc", "ncc_sup"]}
DIRNET_VARIANTS = ["BL", "A1", "A2", "B1", "C1"]


#
# DeepMetricTraining
#


class DeepMetricTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Deep Metric Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = ["DeepRegistration"]
        self.parent.contributors = ["DeepRegistration developers"]
        self.parent.helpText = _(
            "Train the learned multimodal metric (Sedghi et al. 2018: symmetrization, dithering, multi-resolution "
            "multi-shot stages) and the registration networks (diffeomorphic patch-wise, DIRNet, DeepSim with its "
            "segmentation feature extractor) from image pairs. Training runs in a background process and can be stopped and resumed.")
        self.parent.acknowledgementText = _("Part of the DeepRegistration extension.")


#
# Parameters (saved with the scene)
#


@parameterNodeWrapper
class DeepMetricTrainingParameterNode:
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLabels: vtkMRMLLabelMapVolumeNode
    movingLabels: vtkMRMLLabelMapVolumeNode
    pairsCsv: str = ""
    network: Annotated[str, Choice(NETWORKS)] = "metric"
    stages: str = "4:100,2:25,2:15,1:8"
    patchSize: Annotated[int, WithinRange(5, 64)] = 17
    dithers: Annotated[int, WithinRange(1, 1000)] = 100
    symmetrize: bool = True
    similarity: Annotated[str, Choice(SIMILARITIES)] = "nmse"
    regularization: str = ""
    featuresModel: str = "deepsim_features_brain_t1_3d"
    dimension: Annotated[int, WithinRange(2, 3)] = 3
    dirnetVariant: Annotated[str, Choice(DIRNET_VARIANTS)] = "BL"
    epochs: Annotated[int, WithinRange(1, 1000)] = 4
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    outputModel: str = ""
    curvesTable: vtkMRMLTableNode
    #: the chart of the curves (not bound: shown in the plot view); reused by every update
    curvesChart: vtkMRMLPlotChartNode
    realignmentTable: vtkMRMLTableNode


#
# Widget
#


class DeepMetricTrainingWidget(ParameterNodeWidget):
    def __init__(self, parent=None) -> None:
        ParameterNodeWidget.__init__(self, parent)
        self._preview = None
        self._previewTimer = None

    def createLogic(self):
        return DeepMetricTrainingLogic()

    def setup(self) -> None:
        ParameterNodeWidget.setup(self)
        self.ui.startButton.connect("clicked(bool)", lambda: self.onStart(resume=False))
        self.ui.resumeButton.connect("clicked(bool)", lambda: self.onStart(resume=True))
        self.ui.stopButton.connect("clicked(bool)", self.stopJob)
        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.browsePairsButton.connect("clicked(bool)", self.onBrowsePairs)
        self.ui.browseOutputButton.connect("clicked(bool)", self.onBrowseOutput)
        self.ui.networkComboBox.connect("currentIndexChanged(int)", self.onNetworkChanged)
        self.initializeParameterNode()
        self.onNetworkChanged()

    def updateGui(self, caller=None, event=None) -> None:
        p = self._parameterNode
        hasData = bool(p and (p.pairsCsv or (p.fixedVolume and p.movingVolume)))
        running = self._job is not None
        self.ui.startButton.enabled = hasData and not running
        self.ui.resumeButton.enabled = hasData and not running and self.logic.hasCheckpoint(p)
        self.ui.resumeButton.toolTip = _("Continue from the last checkpoint of the output model") \
            if self.ui.resumeButton.enabled else _("No checkpoint of this output model yet")
        self.ui.stopButton.enabled = running
        previewing = self._preview is not None and not self._preview.done()
        self.ui.previewButton.enabled = bool(p and p.fixedVolume and p.movingVolume) and not previewing

    def onNetworkChanged(self, index=None) -> None:
        network = self.ui.networkComboBox.currentText
        self.ui.metricOptionsCollapsibleButton.visible = network == "metric"
        self.ui.registrationOptionsCollapsibleButton.visible = network != "metric"
        self.ui.similarityComboBox.enabled = network in NETWORK_SIMILARITIES
        self.ui.regularizationLineEdit.enabled = network in NETWORK_SIMILARITIES
        self.ui.dimensionSpinBox.enabled = network in ("dirnet", "deepsim-features", "deepsim")
        self.ui.dirnetVariantComboBox.enabled = network == "dirnet"
        p = self._parameterNode
        if p and network in NETWORK_SIMILARITIES and p.similarity not in NETWORK_SIMILARITIES[network]:
            p.similarity = NETWORK_SIMILARITIES[network][0]

    def onBrowsePairs(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Pairs CSV"), "", "CSV (*.csv)")
        if path:
            self._parameterNode.pairsCsv = path

    def onBrowseOutput(self) -> None:
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Output model"), self._parameterNode.outputModel,
                                              "Model (*.pt)")
        if path:
            self._parameterNode.outputModel = path if path.endswith(".pt") else path + ".pt"

    def onPreview(self) -> None:
        """Patches are sampled in a worker thread; the montage is shown when it is ready."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Preview failed."), waitCursor=True):
            from DeepRegistration import DeepRegistrationLogic
            if not DeepRegistrationLogic.ensureDependencies():
                return
            self._preview = self.logic.startPreview(p.fixedVolume, p.movingVolume, p.patchSize)
            self.ui.previewButton.enabled = False
            self._previewTimer = qt.QTimer()
            self._previewTimer.timeout.connect(self._pollPreview)
            self._previewTimer.start(200)

    def _pollPreview(self) -> None:
        if not self._preview.done():
            return
        self._previewTimer.stop()
        self.updateGui()
        with slicer.util.tryWithErrorDisplay(_("Preview failed."), waitCursor=True):
            node = self.logic.finishPreview(self._preview)
            slicer.util.setSliceViewerLayers(background=node, fit=True)

    def onStart(self, resume: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            from DeepRegistration import DeepRegistrationLogic
            if not DeepRegistrationLogic.ensureDependencies():
                return
            self._job = self.logic.startTraining(self._parameterNode, resume)
            self.ui.logTextEdit.clear()
            self.startPolling(self._poll, 500)
            self.updateGui()

    def _poll(self) -> None:
        events, finished = self.readJob()
        self.logic.applyEvents(events, self._parameterNode)
        for event in events:
            if "fraction" in event:
                self.ui.progressBar.value = int(100 * event["fraction"])
            if event.get("message"):
                self.ui.statusLabel.text = event["message"]
        if not finished:
            return
        job = self._job
        with slicer.util.tryWithErrorDisplay(_("Training failed."), waitCursor=False):
            if job.returncode != 0:
                raise RuntimeError(job.error_message())
            self.ui.statusLabel.text = _("Saved {path}; it is now listed in Deep Registration.").format(
                path=self._parameterNode.outputModel)
        self.logic.cleanupJob(self._job)
        self._job = None
        self.updateGui()

    def stopJob(self) -> None:
        """Signal the whole process tree (the trainer writes its checkpoint on SIGTERM), then end it."""
        if self._job is not None:
            with slicer.util.tryWithErrorDisplay(_("Stopping failed."), waitCursor=True):
                self._job.cancel()
                self.logic.applyEvents(self._job.events(), self._parameterNode)
            self.ui.statusLabel.text = _("Stopped; Resume continues from the last checkpoint.")
            self.logic.cleanupJob(self._job)
        if self._timer is not None:
            self._timer.stop()
        self._job = None
        if self._parameterNode:
            self.updateGui()


#
# Logic (works without the GUI)
#


class DeepMetricTrainingLogic(ScriptedLoadableModuleLogic):
    """Prepare training data from the scene, run a ``deepregistration train-*`` command in the background,
    and turn its JSON progress into table and plot nodes. Batch scripts can call :meth:`train` (blocking)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.curveRows = []

    @staticmethod
    def checkpointDir(outputModel: str) -> str:
        """Where the trainer keeps the checkpoints of ``outputModel`` (the CLI's ``--checkpoint-dir``)."""
        return os.path.splitext(outputModel)[0] + "_checkpoints"

    @classmethod
    def hasCheckpoint(cls, parameterNode) -> bool:
        folder = cls.checkpointDir(parameterNode.outputModel) if parameterNode.outputModel else ""
        return bool(folder) and os.path.isdir(folder) and any(os.scandir(folder))

    @staticmethod
    def defaultOutputModel(network: str) -> str:
        """A new file in the user models folder (where Deep Registration lists trained models)."""
        from DeepRegistrationLib.data.sources import cache_dir
        folder = cache_dir() / "models"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"{network}-{time.strftime('%Y%m%d-%H%M%S')}.pt")

    def getParameterNode(self):
        return DeepMetricTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def previewPatchPairs(fixedVolume, movingVolume, patchSize: int = 17):
        """A montage volume of sampled positive and negative patch pairs (blocking)."""
        from DeepRegistrationLib.mrml import patch_preview_node
        return patch_preview_node(fixedVolume, movingVolume, patch_size=patchSize)

    @staticmethod
    def startPreview(fixedVolume, movingVolume, patchSize: int = 17):
        """The volumes are read here (MRML, main thread); the patches are sampled in a worker thread.
        Returns a future for :meth:`finishPreview`."""
        from concurrent.futures import ThreadPoolExecutor
        from DeepRegistrationLib.mrml import patch_preview_image, volume_node_to_image
        fixed = volume_node_to_image(fixedVolume, "fixed volume")
        moving = volume_node_to_image(movingVolume, "moving volume")
        executor = ThreadPoolExecutor(max_workers=1)
        future = executor.submit(patch_preview_image, fixed, moving, patch_size=patchSize)
        executor.shutdown(wait=False)
        return future

    @staticmethod
    def finishPreview(future):
        from DeepRegistrationLib.mrml import PATCH_PREVIEW_NAME, image_to_volume_node
        return image_to_volume_node(future.result(), slicer.mrmlScene, PATCH_PREVIEW_NAME)

    @staticmethod
    def pairsCsvFromNodes(fixedVolume, movingVolume, folder: str, fixedLabels=None, movingLabels=None) -> str:
        """Write the scene pair (and its label maps, when given) to ``folder`` and a one-row pairs CSV next to it."""
        from DeepRegistrationLib.core.io import write_image
        from DeepRegistrationLib.mrml import volume_node_to_image
        from DeepRegistrationLib.training.common import write_pairs_csv
        row = {}
        for key, node in (("fixed", fixedVolume), ("moving", movingVolume), ("fixed_labels", fixedLabels),
                          ("moving_labels", movingLabels)):
            if node is not None:
                write_image(volume_node_to_image(node, key.replace("_", " ")), os.path.join(folder, f"{key}.nrrd"))
                row[key] = f"{key}.nrrd"
        csv = os.path.join(folder, "pairs.csv")
        write_pairs_csv(csv, [row])
        return csv

    def trainingArguments(self, parameterNode, resume: bool, folder: str) -> list:
        """The ``deepregistration train-*`` command line for the parameters (scene inputs written to ``folder``)."""
        p = parameterNode
        if p.network == "deepsim-features" and not p.pairsCsv and not (p.fixedLabels and p.movingLabels):
            raise ValueError(_("DeepSim's feature extractor trains on segmentation: select the fixed and moving "
                               "label maps, or give a pairs CSV with fixed_labels and moving_labels columns."))
        if p.network in NETWORK_SIMILARITIES and p.similarity not in NETWORK_SIMILARITIES[p.network]:
            raise ValueError(_("{network} trains with the similarities {choices}, not {similarity}.").format(
                network=p.network, choices=", ".join(NETWORK_SIMILARITIES[p.network]), similarity=p.similarity))
        pairs = p.pairsCsv or self.pairsCsvFromNodes(p.fixedVolume, p.movingVolume, folder, p.fixedLabels,
                                                     p.movingLabels)
        args = [COMMANDS[p.network], "--pairs", pairs, "--out", p.outputModel, "--epochs", str(p.epochs),
                "--device", p.device, "--progress-json",
                "--checkpoint-dir", self.checkpointDir(p.outputModel)]
        if resume:
            args.append("--resume")
        if p.network == "metric":
            args += ["--stages", p.stages, "--patch-size", str(p.patchSize), "--dithers", str(p.dithers)]
            if not p.symmetrize:
                args.append("--no-symmetrize")
        if p.network in NETWORK_SIMILARITIES:
            args += ["--similarity", p.similarity]
            if p.similarity == "deepsim":
                args += ["--features", p.featuresModel]
            if p.regularization:
                args += [{"diffeo": "--reg-weight", "deepsim": "--lam"}[p.network], p.regularization]
        if p.network in ("dirnet", "deepsim-features", "deepsim"):
            args += ["--dim", str(p.dimension)]
        if p.network == "dirnet":
            args += ["--variant", p.dirnetVariant]
        return args

    def startTraining(self, parameterNode, resume: bool = False):
        from DeepRegistration import DeepRegistrationLogic
        from DeepRegistrationLib.background import BackgroundCommand
        if not parameterNode.outputModel:
            parameterNode.outputModel = self.defaultOutputModel(parameterNode.network)
        if resume and not self.hasCheckpoint(parameterNode):
            raise ValueError(_("There is no checkpoint of {path} to resume from.").format(path=parameterNode.outputModel))
        if not resume:
            self.curveRows = []
        folder = tempfile.mkdtemp(prefix="DeepMetricTraining-")
        job = BackgroundCommand(self.trainingArguments(parameterNode, resume, folder),
                                DeepRegistrationLogic.pythonSlicer(), DeepRegistrationLogic.childEnvironment()).start()
        job.folder = folder
        return job

    def train(self, parameterNode, resume: bool = False) -> list:
        """Blocking training (batch scripting); returns the progress events."""
        job = self.startTraining(parameterNode, resume)
        try:
            job.wait()
        finally:
            self.cleanupJob(job)
        events = job.events()
        self.applyEvents(events, parameterNode)
        if job.returncode != 0:
            raise RuntimeError(job.error_message())
        return events

    @staticmethod
    def cleanupJob(job) -> None:
        """Delete the job's temporary folder (the scene pair written for it; Resume writes it again)."""
        shutil.rmtree(job.folder, ignore_errors=True)

    def applyEvents(self, events: list, parameterNode) -> None:
        """Loss/accuracy curves into a table + plot chart; realignment corrections into a table."""
        import numpy as np
        from DeepRegistrationLib.mrml import plot_chart_from_columns
        p = parameterNode
        steps = [e for e in events if e.get("event") in ("step", "epoch") and "loss" in e]
        if steps:
            self.curveRows += [(e.get("step", len(self.curveRows)), e.get("loss", np.nan), e.get("accuracy", np.nan),
                                e.get("val_loss", np.nan)) for e in steps]
            array = np.array(self.curveRows, dtype=float)
            shown = p.curvesChart is not None
            chart, table = plot_chart_from_columns(slicer.mrmlScene, "training curves", "step",
                                                   {"loss": array[:, 1], "accuracy": array[:, 2],
                                                    "validation loss": array[:, 3]}, array[:, 0],
                                                   chart=p.curvesChart)
            p.curvesChart, p.curvesTable = chart, table
            if not shown:
                from DeepRegistration import DeepRegistrationLogic
                DeepRegistrationLogic.showChart(chart)
        for e in events:
            if e.get("event") == "realign" and e.get("corrections"):
                from DeepRegistrationLib.mrml import report_to_table_node
                table = report_to_table_node({"stage": e.get("stage", ""), "pairs": e["corrections"]},
                                             slicer.mrmlScene, "re-alignment corrections", p.realignmentTable)
                p.realignmentTable = table
            if e.get("event") == "done" and e.get("model"):
                p.outputModel = e["model"]


#
# Self-test (run inside Slicer)
#


class DeepMetricTrainingTest(ScriptedLoadableModuleTest):
    """Runs in Slicer's test harness: dependencies first, Slicer's SampleData brain MR volumes as data."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from DeepRegistration import DeepRegistrationLogic
        if not DeepRegistrationLogic.ensureDependencies(askConfirmation=False):
            self.skipTest("PyTorch (SlicerPyTorch) is not installed")
        self.setUp()
        self.test_PreviewAndTinyTraining()

    def test_PreviewAndTinyTraining(self):
        """Preview patch pairs of a sample pair, then train a one-stage metric for one short epoch."""
        import SampleData
        self.delayDisplay("Loading sample data")
        fixed = SampleData.downloadSample("MRBrainTumor1")
        moving = SampleData.downloadSample("MRBrainTumor2")
        logic = DeepMetricTrainingLogic()
        preview = logic.previewPatchPairs(fixed, moving)
        self.assertIsNotNone(preview.GetImageData())
        p = logic.getParameterNode()
        p.fixedVolume, p.movingVolume = fixed, moving
        p.stages, p.epochs, p.dithers = "2:25", 1, 2
        p.outputModel = os.path.join(tempfile.mkdtemp(), "metric.pt")
        events = logic.train(p)
        self.assertTrue(any(e.get("event") == "done" for e in events))
        self.assertTrue(os.path.exists(p.outputModel))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode"), 1)
        self.delayDisplay("Test passed: " + json.dumps(events[-1]))
