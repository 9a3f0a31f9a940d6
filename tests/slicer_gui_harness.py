"""Run the Slicer module files' widgets and logic outside Slicer, held to Slicer's rules.

What is real: the MRML scene and nodes (slicer-core), ``slicer.util``'s MRML helpers, Qt widgets
(PySide6) loaded from the module's own .ui file, and the GUI-connector choice of
``slicer.parameterNodeWrapper`` at every supported version (``slicer_rules.connector_for``, from facts
extracted from Slicer's source). What stands in for the Slicer application:

- ``qt``: PySide6 classes behind a proxy that speaks PythonQt (Qt properties as attributes,
  ``widget.connect("clicked(bool)", slot)``);
- the CTK/qMRML widgets of the .ui: small PySide6 classes with the same names, properties and signals
  (the node combo box lists the scene's nodes of its ``nodeTypes`` as qMRMLNodeComboBox does, children
  included only with ``showChildNodeTypes``);
- ``slicer.parameterNodeWrapper``: typed parameters with their defaults and validators
  (``Choice``, ``WithinRange``, node classes), stored on a real ``vtkMRMLScriptedModuleNode``, and
  ``connectGui`` that builds every connector first, refusing what Slicer refuses, then connects them;
- ``slicer.ScriptedLoadableModule``, ``slicer.i18n``, ``PyTorchUtils`` (SlicerPyTorch), dialogs.
"""
from __future__ import annotations

import enum
import os
import sys
import types
import typing

import slicer_rules

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_LOGGING_RULES", "qt.core.qobject.connect=false")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtCore import Property, Signal  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402


# --- PythonQt-style access to PySide6 objects -------------------------------------------------------

def unwrap(value):
    return object.__getattribute__(value, "_qobject") if isinstance(value, PythonQt) else value


def wrap(value):
    return PythonQt(value) if isinstance(value, QtCore.QObject) else value


class PythonQt:
    """A Qt object as PythonQt shows it to Slicer's Python: Qt properties read and written as attributes."""

    def __init__(self, qobject):
        object.__setattr__(self, "_qobject", qobject)

    def __getattr__(self, name):
        qobject = object.__getattribute__(self, "_qobject")
        if name == "connect":
            return lambda signature, slot: getattr(qobject, signature.split("(")[0]).connect(slot)
        if qobject.metaObject().indexOfProperty(name) >= 0:   # as in PythonQt, a Qt property wins over a method
            return wrap(qobject.property(name))
        attribute = getattr(qobject, name)
        if callable(attribute) and not isinstance(attribute, QtCore.SignalInstance):
            return lambda *args, **kwargs: wrap(attribute(*[unwrap(a) for a in args], **kwargs))
        return wrap(attribute)

    def __setattr__(self, name, value):
        qobject = object.__getattribute__(self, "_qobject")
        if qobject.metaObject().indexOfProperty(name) < 0:
            raise AttributeError(f"{type(qobject).__name__} has no Qt property {name!r}")
        if not qobject.setProperty(name, unwrap(value)):
            raise AttributeError(f"{type(qobject).__name__}.{name} could not be set to {value!r}")

    def __eq__(self, other):
        return unwrap(self) is unwrap(other)

    def __hash__(self):
        return id(unwrap(self))


def qt_module():
    qt = types.ModuleType("qt")
    for name in dir(QtWidgets) + dir(QtCore) + dir(QtGui):
        if name.startswith("Q"):
            cls = getattr(QtWidgets, name, None) or getattr(QtCore, name, None) or getattr(QtGui, name, None)
            if isinstance(cls, type) and issubclass(cls, QtCore.QObject):
                setattr(qt, name, _wrapping_class(cls))
            else:
                setattr(qt, name, cls)
    return qt


def _wrapping_class(cls):
    def make(*args, **kwargs):
        return wrap(cls(*[unwrap(a) for a in args], **kwargs))
    for attribute in ("getOpenFileName", "getSaveFileName", "getText"):
        if hasattr(cls, attribute):
            make.__dict__[attribute] = getattr(cls, attribute)
    return make


# --- the CTK / qMRML widgets of the .ui files ----------------------------------------------------------

class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = Signal(object)

    def setMRMLScene(self, scene):
        self.mrmlSceneChanged.emit(scene)
        for combo in self.findChildren(qMRMLNodeComboBox):
            combo.setMRMLScene(scene)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Lists the scene's nodes of ``nodeTypes`` (subclasses only with ``showChildNodeTypes``, minus
    ``hideChildNodeTypes``), with a "None" entry when ``noneEnabled``."""

    currentNodeChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._types, self._hide, self._show_children, self._none = [], [], True, False
        self._flags = {"addEnabled": True, "removeEnabled": True, "renameEnabled": False, "editEnabled": False}
        self._scene, self._nodes = None, []
        self.currentIndexChanged.connect(lambda index: self.currentNodeChanged.emit(self.currentNode()))

    def _get_types(self):
        return self._types

    def _set_types(self, types_):
        self._types = list(types_)

    def _get_hide(self):
        return self._hide

    def _set_hide(self, types_):
        self._hide = list(types_)

    def _get_show(self):
        return self._show_children

    def _set_show(self, value):
        self._show_children = bool(value)

    def _get_none(self):
        return self._none

    def _set_none(self, value):
        self._none = bool(value)

    nodeTypes = Property("QStringList", _get_types, _set_types)
    hideChildNodeTypes = Property("QStringList", _get_hide, _set_hide)
    showChildNodeTypes = Property(bool, _get_show, _set_show)
    noneEnabled = Property(bool, _get_none, _set_none)
    addEnabled = Property(bool, lambda self: self._flags["addEnabled"], lambda self, v: self._flags.update(addEnabled=v))
    removeEnabled = Property(bool, lambda self: self._flags["removeEnabled"],
                             lambda self, v: self._flags.update(removeEnabled=v))
    renameEnabled = Property(bool, lambda self: self._flags["renameEnabled"],
                             lambda self, v: self._flags.update(renameEnabled=v))
    editEnabled = Property(bool, lambda self: self._flags["editEnabled"], lambda self, v: self._flags.update(editEnabled=v))

    def accepts(self, node) -> bool:
        if any(node.IsA(t) for t in self._hide):
            return False
        if self._show_children:
            return any(node.IsA(t) for t in self._types)
        return node.GetClassName() in self._types

    def setMRMLScene(self, scene):
        self._scene = scene
        self.refresh()

    def refresh(self):
        current = self.currentNode()
        self._nodes = ([None] if self._none else []) + [
            scene_node for scene_node in (self._scene.GetNthNode(n) for n in range(self._scene.GetNumberOfNodes()))
            if self.accepts(scene_node)] if self._scene else []
        self.blockSignals(True)
        self.clear()
        for node in self._nodes:
            self.addItem("None" if node is None else node.GetName())
        self.blockSignals(False)
        self.setCurrentNode(current)

    def nodes(self) -> list:
        return [n for n in self._nodes if n is not None]

    def currentNode(self):
        index = self.currentIndex()
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def setCurrentNode(self, node):
        if node is not None and node not in self._nodes and self._scene is not None:
            self.refresh_with(node)
        self.setCurrentIndex(self._nodes.index(node) if node in self._nodes else -1)

    def refresh_with(self, node):
        if self.accepts(node):
            self._nodes.append(node)
            self.addItem(node.GetName())


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    def _get_text(self):
        return self.title()

    def _set_text(self, text):
        self.setTitle(text)

    text = Property(str, _get_text, _set_text)
    collapsed = Property(bool, lambda self: getattr(self, "_collapsed", False),
                         lambda self, v: setattr(self, "_collapsed", bool(v)))


class ctkSliderWidget(QtWidgets.QDoubleSpinBox):
    """A double spin box is what ctkSliderWidget shows next to its slider: value, range, step, decimals."""


CUSTOM_WIDGETS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget)


def load_ui(path):
    loader = QUiLoader()
    for cls in CUSTOM_WIDGETS:
        loader.registerCustomWidget(cls)
    file = QtCore.QFile(str(path))
    file.open(QtCore.QFile.ReadOnly)
    widget = loader.load(file)
    file.close()
    if widget is None:
        raise RuntimeError(f"{path}: {loader.errorString()}")
    return wrap(widget)


def child_widget_variables(widget):
    return types.SimpleNamespace(**{child.objectName(): wrap(child)
                                    for child in unwrap(widget).findChildren(QtCore.QObject) if child.objectName()})


# --- slicer.parameterNodeWrapper, with Slicer's connector rules ----------------------------------

class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _split(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return base, extra
    return annotation, []


def _node_classes(base):
    members = typing.get_args(base) if typing.get_origin(base) is typing.Union else (base,)
    members = tuple(m for m in members if m is not type(None))
    return members if all(isinstance(m, type) and m.__name__.startswith("vtkMRML") for m in members) else ()


def parameter_type(annotation) -> slicer_rules.ParameterType:
    base, extra = _split(annotation)
    names = tuple(type(a).__name__ for a in extra)
    if _node_classes(base):
        return slicer_rules.ParameterType("node", names)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return slicer_rules.ParameterType("enum", names)
    return slicer_rules.ParameterType(base.__name__, names)


class _Connector:
    """The runtime half of Slicer's connectors the module files use (read, write, changed signal)."""

    def __init__(self, name, widget, annotation):
        self.name, self.widget = name, unwrap(widget)
        base, extra = _split(annotation)
        self.choices = next((a.choices for a in extra if isinstance(a, Choice)), None)
        if name == "qMRMLNodeComboBoxToNodeConnector":   # Slicer's connector sets the types from the annotation
            self.widget.nodeTypes = [c.__name__ for c in _node_classes(base)]
            self.widget.refresh()
        elif name == "QComboBoxToStringableConnector":
            self.widget.clear()
            self.widget.addItems([str(c) for c in self.choices])
        elif name == "QComboBoxToEnumConnector":
            self.choices = list(base)
            label = getattr(base, "label", lambda member: member.name)
            self.widget.clear()
            self.widget.addItems([label(m) for m in self.choices])

    def signal(self):
        return {"QComboBoxToStringableConnector": "currentIndexChanged", "QComboBoxToEnumConnector": "currentIndexChanged",
                "QCheckBoxToBoolConnector": "toggled", "QSliderOrSpinBoxToIntConnector": "valueChanged",
                "QDoubleSpinBoxCtkSliderWidgetToFloatConnector": "valueChanged",
                "QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector": "valueChanged",
                "QLineEditToStrConnector": "textChanged", "qMRMLNodeComboBoxToNodeConnector": "currentNodeChanged"}[self.name]

    def read(self):
        w = self.widget
        if self.choices is not None:
            return self.choices[w.currentIndex()]
        if self.name == "QCheckBoxToBoolConnector":
            return w.isChecked()
        if self.name == "QLineEditToStrConnector":
            return w.text()
        if self.name == "qMRMLNodeComboBoxToNodeConnector":
            return w.currentNode()
        return w.value()

    def write(self, value):
        w = self.widget
        w.blockSignals(True)
        if self.choices is not None:
            w.setCurrentIndex(self.choices.index(value))
        elif self.name == "QCheckBoxToBoolConnector":
            w.setChecked(bool(value))
        elif self.name == "QLineEditToStrConnector":
            w.setText(value)
        elif self.name == "qMRMLNodeComboBoxToNodeConnector":
            w.setCurrentNode(value)
        else:
            w.setValue(value)
        w.blockSignals(False)


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: cls.__dict__.get(name) for name in hints}

    def validate(name, value):
        base, extra = _split(hints[name])
        nodes = _node_classes(base)
        if nodes:
            if value is None and typing.get_origin(base) is typing.Union and type(None) not in typing.get_args(base):
                raise TypeError(f"{name}: Unable to write value 'None' (a Union of nodes needs None among its types)")
            if value is not None and not isinstance(value, nodes):
                raise ValueError(f"{name}: {value.GetClassName()} is not one of {[n.__name__ for n in nodes]}")
            return value
        if not isinstance(value, base) or (base is int and isinstance(value, bool)):
            if base is float and isinstance(value, int):
                value = float(value)
            else:
                raise TypeError(f"{name}: {value!r} is not a {base.__name__}")
        for a in extra:
            if isinstance(a, Choice) and value not in a.choices:
                raise ValueError(f"{name}: {value!r} is not in {a.choices}")
            if isinstance(a, WithinRange) and not a.minimum <= value <= a.maximum:
                raise ValueError(f"{name}: {value!r} is not within [{a.minimum}, {a.maximum}]")
        return value

    class Wrapper:
        allParameters = hints

        def __init__(self, parameterNode):
            object.__setattr__(self, "parameterNode", parameterNode)
            object.__setattr__(self, "_values", {name: validate(name, value) for name, value in defaults.items()})
            object.__setattr__(self, "_guis", {})

        def __getattr__(self, name):
            if name in hints:
                return self._values[name]
            raise AttributeError(name)

        def __setattr__(self, name, value):
            if name not in hints:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            self._values[name] = validate(name, value)
            self.parameterNode.Modified()
            for connectors in self._guis.values():
                if name in connectors:
                    connectors[name].write(self._values[name])

        def AddObserver(self, event, callback, priority=0.0):
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag):
            self.parameterNode.RemoveObserver(tag)

        def StartModify(self):
            return self.parameterNode.StartModify()

        def EndModify(self, wasModifying):
            self.parameterNode.EndModify(wasModifying)

        def connectGui(self, gui):
            """Slicer's ``_connectParametersToGui``: every connector is built first (at every supported
            version's rules), so one refused binding fails the whole setup; then values and signals."""
            bound = {}
            for widget in vars(gui).values():
                name = unwrap(widget).property("SlicerParameterName")
                if name:
                    if name not in hints:
                        raise ValueError(f"{name} is not a parameter of {cls.__name__}")
                    bound[name] = widget
            connectors = {}
            for name, widget in bound.items():
                widget_class = type(unwrap(widget)).__name__
                rule = None
                for tag in slicer_rules.SUPPORTED:
                    rule = slicer_rules.connector_for(slicer_rules.facts(tag)["guiConnectors"], widget_class,
                                                      parameter_type(hints[name]))
                connectors[name] = _Connector(rule["connector"], widget, hints[name])
            for name, connector in connectors.items():
                connector.write(self._values[name])
                getattr(connector.widget, connector.signal()).connect(
                    lambda *args, n=name, c=connector: self._fromGui(n, c))
            tag = len(self._guis) + 1
            self._guis[tag] = connectors
            return tag

        def _fromGui(self, name, connector):
            self._values[name] = validate(name, connector.read())
            self.parameterNode.Modified()

        def disconnectGui(self, tag):
            self._guis.pop(tag, None)

    Wrapper.__name__ = cls.__name__
    for name, value in vars(cls).items():
        if not name.startswith("__") and name not in hints:
            setattr(Wrapper, name, value)
    return Wrapper


# --- the rest of Slicer's Python framework ------------------------------------------------------------

class _ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class _ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = wrap(QtWidgets.QWidget())
        self.layout = wrap(QtWidgets.QVBoxLayout(unwrap(self.parent)))
        self.moduleName = type(self).__name__[:-len("Widget")]

    def resourcePath(self, filename):
        return str(slicer_rules.ROOT / self.moduleName / "Resources" / filename)

    def setup(self):
        pass


class _ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        import slicer
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class _ScriptedLoadableModuleTest:
    pass


class PyTorchUtilsRecorder:
    """SlicerPyTorch's module as the install flow sees it, with torch not installed; records the calls."""

    calls = []
    installed = False

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            PyTorchUtilsRecorder.calls.append("torchInstalled")
            return PyTorchUtilsRecorder.installed

        def installTorch(self, askConfirmation=True, torchVersionRequirement=None):
            PyTorchUtilsRecorder.calls.append(("installTorch", askConfirmation, torchVersionRequirement))
            return None   # the user declined


def install(monkeypatch, scene):
    """Put the stand-ins in place for one test (``monkeypatch`` undoes it) and return the displayed errors."""
    import slicer
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = _ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = _ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    slm.ScriptedLoadableModuleTest = _ScriptedLoadableModuleTest
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper, wrapper.Choice, wrapper.WithinRange = parameterNodeWrapper, Choice, WithinRange
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = PyTorchUtilsRecorder.PyTorchUtilsLogic
    PyTorchUtilsRecorder.calls, PyTorchUtilsRecorder.installed = [], False
    for name, module in {"qt": qt_module(), "slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": wrapper,
                         "slicer.i18n": i18n, "PyTorchUtils": torch_utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    errors = []

    class _ErrorDisplay:
        def __init__(self, message=None, show=True, waitCursor=False):
            self.message = message

        def __enter__(self):
            return self

        def __exit__(self, kind, value, traceback):
            if value is not None:
                errors.append(f"{self.message} {value}")
            return value is not None and not isinstance(value, AssertionError)

    monkeypatch.setattr(slicer.util, "loadUI", load_ui, raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", child_widget_variables, raising=False)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", _ErrorDisplay, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda message, *a, **k: errors.append(message), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: False, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kwargs: None, raising=False)
    for folder in ("DeepRegistration", "DeepMetricTraining"):
        monkeypatch.syspath_prepend(str(slicer_rules.ROOT / folder))
        monkeypatch.delitem(sys.modules, folder, raising=False)
    for name in [n for n in sys.modules if n.split(".")[0] == "DeepRegistrationPanels"]:   # imports this qt
        monkeypatch.delitem(sys.modules, name)
    return app, errors


def build_widget(module, scene):
    """Import the module file, make its widget and run ``setup()`` (and ``enter()``) as Slicer does."""
    import importlib
    mod = importlib.import_module(module)
    widget = getattr(mod, f"{module}Widget")()
    widget.setup()
    widget.enter()
    return mod, widget


__all__ = ["install", "build_widget", "PyTorchUtilsRecorder", "unwrap", "wrap"]
