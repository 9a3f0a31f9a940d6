"""The widget half of Slicer's scripted-module template, once for both panels.

:class:`ParameterNodeWidget` loads ``Resources/UI/<Module>.ui``, binds it to the logic's parameter node
(``connectGui``) on setup, on every enter and after a scene close, calls :meth:`updateGui` whenever the
node changes, and polls a background job (:mod:`DeepRegistrationLib.background`) into the panel's log.
A panel defines ``createLogic``, ``updateGui`` and ``stopJob``.
"""
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin


class ParameterNodeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self.jobWarnings = []

    # --- what a panel defines ---

    def createLogic(self):
        raise NotImplementedError

    def updateGui(self, caller=None, event=None) -> None:
        """Enable and fill what the parameters allow (called on every change of the parameter node)."""
        raise NotImplementedError

    def stopJob(self) -> None:
        """End the running background job, if any (called when the module is cleaned up)."""
        raise NotImplementedError

    # --- the template ---

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self) -> None:
        self.removeObservers()
        self.stopJob()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.updateGui()

    # --- background jobs ---

    def startPolling(self, poll, intervalMs: int) -> None:
        """Call ``poll`` every ``intervalMs`` while the job runs."""
        self.jobWarnings = []
        self._timer = qt.QTimer()
        self._timer.timeout.connect(poll)
        self._timer.start(intervalMs)

    def readJob(self) -> tuple:
        """(events, finished): the job's new progress events, its new log lines and the warnings of its result
        appended to the log (the warnings also to ``jobWarnings``), and whether it has ended (then polling
        stops). ``finished`` is read before the events are drained, so every event of a finished job is among
        them."""
        finished = self._job.finished
        events = self._job.events()
        for line in self._job.new_log_lines():
            self.ui.logTextEdit.appendPlainText(line)
        for warning in (w for event in events if event.get("event") == "done" for w in event.get("warnings", [])):
            self.jobWarnings.append(warning)
            self.ui.logTextEdit.appendPlainText(_("Warning: {text}").format(text=warning))
        if finished:
            self._timer.stop()
        return events, finished
