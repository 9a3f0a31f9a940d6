"""The Slicer module files against Slicer's own rules at every supported version (facts extracted from
Slicer's source, ``tests/slicer_facts``), their .ui files and CMake lists. Parsed, not run."""
import ast
import json
import re
import textwrap
from pathlib import Path

import pytest

from slicer_rules import (MODULES, ROOT, SUPPORTED, ParameterType, connector_for, facts, module_tree,
                          parameter_types, ui_bindings, ui_tree)

#: parameters deliberately not bound through SlicerParameterName (the widget syncs them itself)
UNBOUND = {"DeepRegistration": {"model", "methodOptions"}, "DeepMetricTraining": {"curvesChart"}}
#: files that run inside Slicer and use its API
#: the code both panels share (the widget half of Slicer's template, background-job polling)
PANELS = ROOT / "DeepRegistration" / "DeepRegistrationPanels"
SLICER_FILES = ([ROOT / m / f"{m}.py" for m in MODULES] + [PANELS / "parameter_node_widget.py"]
                + [ROOT / "DeepRegistration" / "DeepRegistrationLib" / "mrml.py"])
#: Qt's own QWidget/QComboBox properties a .ui may set on a qMRML widget
QT_PROPERTIES = {"toolTip", "enabled", "sizeAdjustPolicy", "geometry", "minimumSize", "maximumSize", "sizePolicy"}


def module_source(module):
    return (ROOT / module / f"{module}.py").read_text()


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_by_the_widget_exists(module):
    widgets = {w.get("name") for w in ui_tree(module).iter("widget")}
    shared = (PANELS / "parameter_node_widget.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", module_source(module) + shared))
    assert used, "the widget uses no .ui names?"
    assert used - widgets == set()


@pytest.mark.parametrize("module", MODULES)
def test_every_parameter_is_bound_to_a_widget_or_synced_by_the_widget(module):
    fields, bound = parameter_types(module), ui_bindings(module)
    assert set(bound) <= set(fields), set(bound) - set(fields)
    assert set(fields) - set(bound) == UNBOUND[module]


@pytest.mark.parametrize("tag", SUPPORTED)
@pytest.mark.parametrize("module", MODULES)
def test_every_binding_has_a_gui_connector(module, tag):
    """What ``connectGui`` does at setup and on every enter: a connector for each bound widget, chosen as
    Slicer's ``createGuiConnector`` chooses it at this version (exact widget class, type, annotations)."""
    rules = facts(tag)["guiConnectors"]
    types = parameter_types(module)
    for parameter, (widget_class, widget_name) in ui_bindings(module).items():
        rule = connector_for(rules, widget_class, types[parameter])
        assert rule, (parameter, widget_name)


def test_the_connector_rules_refuse_what_slicer_refuses():
    """The checker is Slicer's rules, not a stand-in that accepts anything: the bugs of issue 36 are caught."""
    for tag in SUPPORTED:
        rules = facts(tag)["guiConnectors"]
        with pytest.raises(RuntimeError, match="requires the Choice annotation"):   # model: str on a QComboBox
            connector_for(rules, "QComboBox", ParameterType("str"))
        assert connector_for(rules, "QComboBox", ParameterType("str", ("Choice",)))["connector"] == \
            "QComboBoxToStringableConnector"
        assert connector_for(rules, "QComboBox", ParameterType("enum"))["connector"] == "QComboBoxToEnumConnector"
        with pytest.raises(RuntimeError, match="Unable to create GUI connector"):
            connector_for(rules, "qMRMLSubjectHierarchyComboBox", ParameterType("node"))
        with pytest.raises(RuntimeError):   # exact classes: a subclass of QComboBox is not a QComboBox
            connector_for(rules, "ctkCheckableComboBox", ParameterType("str", ("Choice",)))
    # an int on a slider widget connects from 5.10 on, not in 5.8
    with pytest.raises(RuntimeError):
        connector_for(facts("v5.8.1")["guiConnectors"], "ctkSliderWidget", ParameterType("int"))
    assert connector_for(facts("HEAD")["guiConnectors"], "ctkSliderWidget", ParameterType("int"))


# --- the API manifest ------------------------------------------------------------------------------

class _SlicerNames(ast.NodeVisitor):
    """Names a file uses from slicer.util, slicer.i18n, slicer.packaging, slicer.parameterNodeWrapper,
    slicer.ScriptedLoadableModule and the MRML/Slicer classes, each with whether it is guarded
    (``alias = getattr(slicer, "packaging", None)``, then ``alias is not None`` or ``hasattr(alias, "name")``
    in the function that uses ``alias.name``)."""

    MODULES = ("util", "i18n", "packaging", "parameterNodeWrapper", "ScriptedLoadableModule")

    def __init__(self):
        self.used = {}          # (module, name) -> guarded
        self._aliases = {}      # local name -> slicer submodule
        self._guards = set()    # (alias, name) checked with hasattr in the current function

    def _use(self, module, name, guarded=False):
        self.used[(module, name)] = self.used.get((module, name), True) and guarded

    def visit_FunctionDef(self, node):
        outer = self._guards
        self._guards = {(ast.unparse(c.args[0]), c.args[1].value) for c in ast.walk(node)
                        if isinstance(c, ast.Call) and ast.unparse(c.func) == "hasattr" and len(c.args) == 2
                        and isinstance(c.args[1], ast.Constant)}
        self._guards |= {(ast.unparse(c.left), "*") for c in ast.walk(node) if isinstance(c, ast.Compare)
                         and isinstance(c.ops[0], ast.IsNot) and ast.unparse(c.comparators[0]) == "None"}
        self.generic_visit(node)
        self._guards = outer

    def visit_ImportFrom(self, node):
        module = node.module or ""
        for alias in node.names:
            if module.startswith("slicer.") and module.split(".")[1] in self.MODULES:
                self._use(module.split(".")[1], alias.name)
            elif module == "slicer" and alias.name.startswith(("vtk", "q")):
                self._use("classes", alias.name)

    def visit_Assign(self, node):
        value = node.value
        if (isinstance(value, ast.Call) and ast.unparse(value.func) == "getattr" and ast.unparse(value.args[0]) == "slicer"
                and isinstance(value.args[1], ast.Constant) and value.args[1].value in self.MODULES):
            for target in node.targets:
                self._aliases[ast.unparse(target)] = value.args[1].value
        self.generic_visit(node)

    def visit_Attribute(self, node):
        chain = ast.unparse(node)
        parts = chain.split(".")
        if parts[0] == "slicer" and len(parts) >= 3 and parts[1] in self.MODULES:
            self._use(parts[1], re.match(r"\w+", parts[2]).group())
        elif parts[0] == "slicer" and len(parts) >= 2 and re.match(r"(vtkMRML|vtkSlicer|qMRML|qSlicer)\w+", parts[1]):
            self._use("classes", re.match(r"\w+", parts[1]).group())
        elif parts[0] in self._aliases and len(parts) == 2:
            guarded = (parts[0], parts[1]) in self._guards or (parts[0], "*") in self._guards
            self._use(self._aliases[parts[0]], parts[1], guarded=guarded)
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and re.fullmatch(r"vtkMRML\w+Node", node.value):
            self._use("classes", node.value)


def used_slicer_names(path: Path) -> dict:
    visitor = _SlicerNames()
    visitor.visit(ast.parse(path.read_text()))
    return visitor.used


def manifest(tag: str, module: str) -> set:
    data = facts(tag)
    if module == "classes":
        return set(data["classes"])
    return set(data[f"slicer.{module}"] or [])


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_every_slicer_name_exists_in_every_supported_version_or_is_guarded(path):
    used = used_slicer_names(path)
    assert used, "no Slicer name found: the scanner is broken"
    for (module, name), guarded in sorted(used.items()):
        present = [tag for tag in SUPPORTED if name in manifest(tag, module)]
        if guarded:   # then it must exist wherever its module does
            where = [tag for tag in SUPPORTED if module == "classes" or facts(tag)[f"slicer.{module}"] is not None]
            assert present and present == where, f"{path.name}: slicer.{module}.{name} is in {present}, not {where}"
        else:
            assert present == SUPPORTED, (f"{path.name}: slicer.{module}.{name} is missing in "
                                          f"{sorted(set(SUPPORTED) - set(present))} and not guarded")


def test_the_manifest_check_catches_the_old_calls(tmp_path):
    """``slicer.util.pip_check`` (issue 36) is in no release; ``slicer.packaging`` only from 5.12."""
    assert not any("pip_check" in manifest(tag, "util") for tag in SUPPORTED)
    assert facts("v5.8.1")["slicer.packaging"] is None and facts("v5.10.0")["slicer.packaging"] is None
    assert "pip_ensure" in manifest("v5.12.3", "packaging")
    old = tmp_path / "old.py"
    old.write_text("import slicer\ndef f(n):\n    return slicer.util.pip_check(n) or slicer.packaging.pip_ensure(n)\n")
    used = used_slicer_names(old)
    assert used == {("util", "pip_check"): False, ("packaging", "pip_ensure"): False}


def test_the_translation_function_the_panels_import_is_checked_too():
    """Both module files and the shared panel code import ``tr`` from ``slicer.i18n``; the scanner sees the
    import, so the manifest test above checks it in every supported release."""
    panels = [path for path in SLICER_FILES if path.name != "mrml.py"]
    assert len(panels) == 3 and all(("i18n", "tr") in used_slicer_names(path) for path in panels)
    assert all("tr" in manifest(tag, "i18n") and "trx" not in manifest(tag, "i18n") for tag in SUPPORTED)


# --- the C++ methods called on MRML nodes, the scene and module logics ---------------------------------

#: where the files that run in Slicer call methods of MRML/Slicer classes (the shared panel code and the
#: library's MRML adapter and scene batch included)
METHOD_FILES = SLICER_FILES + [ROOT / "DeepRegistration" / "DeepRegistrationLib" / "batch" / "scene.py"]
PARAMETER_NODES = ("p", "parameterNode", "self._parameterNode")
#: classes ``slicer`` exposes whose source is not in Slicer's repository: their methods are not checked
NOT_IN_SLICER_SOURCE = {"vtkOrientedGridTransform": "vtkAddon (github.com/Slicer/vtkAddon, a commit pinned per "
                                                    "release in SuperBuild.cmake)"}


def slicer_class_of(expr, env: dict, fields: dict):
    """The vtkMRML*/vtkSlicer* class of a receiver when the code says it; None when it does not."""
    text = ast.unparse(expr)
    if text in env:
        return env[text]
    if text == "slicer.mrmlScene":
        return "vtkMRMLScene"
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        if expr.func.attr == "logic" and not expr.args:                      # slicer.modules.NAME.logic()
            inner = ast.unparse(expr.func.value)
            if isinstance(env.get(inner), tuple) and env[inner][0] == "module object":
                return ("module", env[inner][1])
            return ("module", inner.split(".")[-1]) if inner.startswith("slicer.modules.") else None
        if expr.func.attr == "AddNewNodeByClass" and expr.args and isinstance(expr.args[0], ast.Constant):
            return expr.args[0].value
        if expr.func.attr == "GetScene":
            return "vtkMRMLScene"
    match = re.fullmatch(r"(?:slicer\.)?((?:vtkMRML|vtkSlicer)\w+|vtk\w+(?=\(\)$))(?:\(\))?", text)
    if match:
        return match.group(1)
    owner, _, field = text.rpartition(".")
    if owner in PARAMETER_NODES and field in fields:
        return fields[field]
    return None


class _MethodCalls(ast.NodeVisitor):
    """Every ``receiver.Name(...)`` call: the receiver's Slicer class where the code says it (the scene, a node
    made by ``AddNewNodeByClass``, ``slicer.vtkSlicer...Logic``, ``slicer.modules.NAME.logic()``, a parameter
    node's single-class node parameter, a ``scene`` argument), and whether a version check guards it
    (``hasattr(..., "Name")`` in the function, or an ``if`` on ``...Version``). Calls on imported Python modules
    and lower-case calls on receivers of unknown class (Python and Qt methods) are not MRML calls."""

    def __init__(self, fields: dict):
        self.calls = []          # (name, class or None or ("module", name), guarded, line)
        self.fields, self._env, self._modules = fields, {}, set()
        self._hasattr, self._version_ifs = set(), 0

    def visit_Import(self, node):
        self._modules.update((a.asname or a.name).split(".")[0] for a in node.names)

    def visit_ImportFrom(self, node):
        self._modules.update(a.asname or a.name for a in node.names if not a.name.startswith(("vtkMRML", "vtkSlicer")))

    def visit_FunctionDef(self, node):
        outer = self._env, self._hasattr
        self._env = dict(self._env)
        self._env.update({a.arg: "vtkMRMLScene" for a in node.args.args if a.arg == "scene"})
        self._hasattr = {c.args[1].value for c in ast.walk(node) if isinstance(c, ast.Call)
                         and ast.unparse(c.func) == "hasattr" and len(c.args) == 2 and isinstance(c.args[1], ast.Constant)}
        self.generic_visit(node)
        self._env, self._hasattr = outer

    def visit_If(self, node):
        version = "Version" in ast.unparse(node.test)
        self.visit(node.test)
        self._version_ifs += version
        for child in node.body:
            self.visit(child)
        self._version_ifs -= version
        for child in node.orelse:
            self.visit(child)

    def visit_Assign(self, node):
        self.generic_visit(node)
        value, cls = node.value, slicer_class_of(node.value, self._env, self.fields)
        text = ast.unparse(value)
        module = re.fullmatch(r'getattr\(getattr\(slicer, .modules., None\), .(\w+)., None\)', text)
        for target in node.targets:
            if module:
                self._env[ast.unparse(target)] = ("module object", module.group(1))
            elif cls is not None:
                self._env[ast.unparse(target)] = cls

    def visit_Call(self, node):
        self.generic_visit(node)
        if not isinstance(node.func, ast.Attribute):
            return
        receiver, name = node.func.value, node.func.attr
        if isinstance(receiver, ast.Name) and receiver.id in self._modules:
            return
        cls = slicer_class_of(receiver, self._env, self.fields)
        if isinstance(cls, tuple) and cls[0] == "module object" or cls is None and not name[:1].isupper():
            return
        self.calls.append((name, cls, name in self._hasattr or self._version_ifs > 0, node.lineno))


def parameter_node_classes(tree: ast.Module) -> dict:
    """Node parameters of the module's parameter node class with a single MRML class: name -> class."""
    out = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode")):
        for statement in cls.body:
            if isinstance(statement, ast.AnnAssign) and re.fullmatch(r"vtkMRML\w+", ast.unparse(statement.annotation)):
                out[statement.target.id] = ast.unparse(statement.annotation)
    return out


def method_calls(path: Path) -> list:
    tree = ast.parse(path.read_text())
    fields = {}
    for module in MODULES:
        fields.update(parameter_node_classes(module_tree(module)))
    visitor = _MethodCalls(fields)
    visitor.visit(tree)
    return visitor.calls


_VTK_METHODS = {}


def vtk_methods(cls: str = None) -> set:
    """Method names of VTK's own classes (the installed VTK: Slicer's sources do not hold VTK's), of one
    class or of all."""
    vtk = pytest.importorskip("vtk")
    if None not in _VTK_METHODS:
        _VTK_METHODS[None] = {m for k in dir(vtk) if k.startswith("vtk") and isinstance(getattr(vtk, k, None), type)
                              for m in dir(getattr(vtk, k)) if m[:1].isupper()}
    if cls is None:
        return _VTK_METHODS[None]
    return set(dir(getattr(vtk, cls, object)))


def has_method(tag: str, cls, name: str) -> bool:
    """Whether ``cls`` (or a base class) has the public method ``name`` in Slicer ``tag``; a class of unknown
    receiver: whether any Slicer class declares it."""
    methods = facts(tag)["methods"]
    if isinstance(cls, tuple):
        cls = facts(tag)["moduleLogics"].get(cls[1])
        if cls is None:
            return False
    if cls is None:
        return any(name in c["methods"] for c in methods.values())
    if cls in NOT_IN_SLICER_SOURCE:
        return True
    while cls in methods:
        if name in methods[cls]["methods"]:
            return True
        cls = methods[cls]["base"]
    return name in vtk_methods(cls)   # the chain left Slicer's classes for VTK's (vtkObject, ...)


def missing_methods(path: Path) -> list:
    """The MRML method calls of ``path`` that some supported version lacks and no version check guards: an
    unknown receiver's upper-case call must be a method of some Slicer class in every version, or of VTK."""
    problems = []
    for name, cls, guarded, line in method_calls(path):
        present = [tag for tag in SUPPORTED if has_method(tag, cls, name)]
        if cls is None and not present and name in vtk_methods():
            continue
        if present == SUPPORTED or (guarded and present):
            continue
        problems.append(f"{path.name}:{line}: {name} on {cls or 'a node'} is missing in "
                        f"{sorted(set(SUPPORTED) - set(present))}")
    return problems


def test_the_manifest_has_the_methods_the_modules_were_checked_for_by_hand():
    for tag in SUPPORTED:
        assert has_method(tag, "vtkSlicerSegmentationsModuleLogic", "ExportVisibleSegmentsToLabelmapNode")
        assert has_method(tag, "vtkMRMLTransformDisplayNode", "SetAndObserveRegionNode")
        assert has_method(tag, ("module", "colors"), "AddDefaultColorLegendDisplayNode")
        assert has_method(tag, "vtkMRMLScalarVolumeNode", "GetParentTransformNode")   # through the base classes
        assert not has_method(tag, "vtkMRMLScalarVolumeNode", "AddDefaultColorLegendDisplayNode")


def test_every_mrml_method_called_exists_in_every_supported_version_or_is_guarded():
    assert sum(len(method_calls(path)) for path in METHOD_FILES) > 100, "few MRML calls found: the scanner is broken"
    assert [problem for path in METHOD_FILES for problem in missing_methods(path)] == []


def test_the_method_check_catches_a_missing_method(tmp_path):
    """A renamed method, a method of another class, a method newer than 5.8 unguarded and guarded."""
    newer = next(m for m in facts("HEAD")["methods"]["vtkMRMLScene"]["methods"]
                 if m not in facts("v5.8.1")["methods"]["vtkMRMLScene"]["methods"])
    code = tmp_path / "calls.py"
    code.write_text(textwrap.dedent(f"""\
        import slicer
        def f(volume, labels):
            slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNodes(volume, labels)
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
            node.AddDefaultColorLegendDisplayNode()
            slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(node)
            slicer.mrmlScene.{newer}()
        def g(scene):
            if hasattr(scene, "{newer}"):
                scene.{newer}()
        """))
    problems = missing_methods(code)
    assert [p.split(": ")[1].split(" is")[0] for p in problems] == [
        "ExportVisibleSegmentsToLabelmapNodes on vtkSlicerSegmentationsModuleLogic",
        "AddDefaultColorLegendDisplayNode on vtkMRMLScalarVolumeNode", f"{newer} on vtkMRMLScene"]


@pytest.mark.parametrize("module", MODULES)
def test_sample_data_used_exists_in_every_supported_version(module):
    tree = module_tree(module)
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and ast.unparse(c.func).startswith("SampleData.")]
    assert calls, "no SampleData use found"
    for call in calls:
        function = ast.unparse(call.func).split(".")[1]
        sample = call.args[0].value
        for tag in SUPPORTED:
            assert function in facts(tag)["SampleData"], (function, tag)
            assert sample in facts(tag)["sampleNames"], (sample, tag)


@pytest.mark.parametrize("tag", SUPPORTED)
@pytest.mark.parametrize("module", MODULES)
def test_ui_slicer_classes_and_their_properties_exist(module, tag):
    data = facts(tag)
    for widget in ui_tree(module).iter("widget"):
        cls = widget.get("class")
        if not cls.startswith("qMRML"):
            continue
        assert cls in data["classes"], f"{cls} is not in Slicer {tag}"
        for prop in widget.findall("property"):
            name = prop.get("name")
            if prop.get("stdset") == "0" or name in QT_PROPERTIES:
                continue
            assert name in data["widgetProperties"].get(cls, []), f"{cls} has no property {name} in {tag}"
        for prop in widget.findall("property/stringlist/string"):
            if prop.text.startswith("vtkMRML"):
                assert prop.text in data["classes"], f"{prop.text} is not in Slicer {tag}"


@pytest.mark.parametrize("module", MODULES)
def test_unions_of_node_classes_include_none(module):
    """Slicer's UnionSerializer cannot write None unless NoneType is a member ("Note the None is necessary for
    the parameterNodeWrapper", parameterNodeWrapper/util.py, isNodeOrUnionOfNodes, at every supported tag)."""
    tree = module_tree(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Union", "typing.Union"):
            members = [ast.unparse(m) for m in (node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice])]
            if any(m.startswith("vtkMRML") for m in members):
                assert "None" in members, ast.unparse(node)


@pytest.mark.parametrize("module", MODULES)
def test_node_selectors_show_child_node_types(module):
    """``showChildNodeTypes=false`` would hide vtkMRMLLinearTransformNode (Transforms module, .h5/.tfm files)
    and label maps; label maps are hidden explicitly where they make no sense."""
    for widget in ui_tree(module).iter("widget"):
        if widget.get("class") == "qMRMLNodeComboBox":
            show = widget.find("property[@name='showChildNodeTypes']/bool")
            assert show is None or show.text == "true", widget.get("name")


@pytest.mark.parametrize("module", MODULES)
def test_node_selector_types_are_the_parameter_node_classes(module):
    """Slicer's node connector sets ``nodeTypes`` from the annotation (``getNodeTypes``), replacing the .ui's:
    the .ui says the same, so the panel looks in Designer as it works in Slicer."""
    tree = module_tree(module)
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    annotations = {s.target.id: s.annotation for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    widgets = {w.get("name"): w for w in ui_tree(module).iter("widget")}
    for parameter, (widget_class, widget_name) in ui_bindings(module).items():
        if widget_class != "qMRMLNodeComboBox":
            continue
        names = [n for n in re.findall(r"vtkMRML\w+", ast.unparse(annotations[parameter]))]
        ui_types = [s.text for s in widgets[widget_name].findall("property[@name='nodeTypes']/stringlist/string")]
        assert ui_types == names, (parameter, ui_types, names)


def test_mask_and_transform_selectors_take_the_usual_nodes():
    types = parameter_types("DeepRegistration")
    text = (ROOT / "DeepRegistration" / "DeepRegistration.py").read_text()
    assert "fixedMask: Union[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, None]" in text
    assert types["fixedMask"].base == types["initialTransform"].base == "node"


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_template(module):
    """Slicer's template, with the widget half (the same in both panels) in the shared ParameterNodeWidget."""
    src = module_source(module)
    for cls in (f"class {module}(ScriptedLoadableModule)", f"class {module}ParameterNode",
                f"class {module}Widget(ParameterNodeWidget)",
                f"class {module}Logic(ScriptedLoadableModuleLogic)", f"class {module}Test(ScriptedLoadableModuleTest)"):
        assert cls in src
    shared = (PANELS / "parameter_node_widget.py").read_text()
    assert "class ParameterNodeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin)" in shared
    assert 'self.resourcePath(f"UI/{self.moduleName}.ui")' in shared
    assert "connectGui(self.ui)" in shared
    for hook in ("createLogic", "updateGui", "stopJob"):
        assert f"def {hook}(self" in src, hook


@pytest.mark.parametrize("module", MODULES)
def test_self_tests_ensure_dependencies_and_download_no_library_data(module):
    """In Slicer's harness: dependencies first; data through SampleData, not the 82 MB wheel."""
    tree = module_tree(module)
    test = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Test")
    source = ast.unparse(test)
    assert "ensureDependencies" in ast.unparse(next(f for f in test.body if getattr(f, "name", "") == "runTest"))
    assert "sources." not in source and "SampleData" in source


def test_presets_are_valid_for_their_method():
    """Each preset names a method or pipeline of the panel; its options are 'OPTION' (a method) or 'STAGE.OPTION'
    (a pipeline) of that stage's spec, typed as the spec says; a model exactly where a stage takes one."""
    from DeepRegistrationLib.methods import PIPELINE_PRESETS, SPECS, pipeline_specs
    folder = ROOT / "DeepRegistration" / "Resources" / "Presets"
    presets = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    assert len(presets) >= 3 and any("+" in preset["method"] for preset in presets)
    for preset in presets:
        assert preset["method"] in (*SPECS, *PIPELINE_PRESETS)
        specs = {spec.name: spec for spec in pipeline_specs(preset["method"])}
        for key, value in preset["options"].items():
            stage, _, option = key.rpartition(".")
            spec = specs[stage] if "+" in preset["method"] else SPECS[preset["method"]]
            spec.option(option).convert(value, spec.name)
        assert (preset["model"] == "") == all(spec.model_kind is None for spec in specs.values())


def cmake_list(path, keyword):
    text = path.read_text()
    block = re.search(rf"set\({keyword}\n(.*?)\n  \)", text, re.S)
    assert block, f"{keyword} list not found in {path}"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_cmake_scripts_list_every_library_file():
    listed = cmake_list(ROOT / "DeepRegistration" / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    actual = sorted(str(p.relative_to(ROOT / "DeepRegistration"))
                    for package in ("DeepRegistrationLib", "DeepRegistrationPanels")
                    for p in (ROOT / "DeepRegistration" / package).rglob("*.py"))
    assert sorted(s for s in listed if s.startswith(("DeepRegistrationLib/", "DeepRegistrationPanels/"))) == actual
    assert "${MODULE_NAME}.py" in listed


def test_cmake_resources_list_ui_icons_models_presets_and_requirements():
    listed = cmake_list(ROOT / "DeepRegistration" / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    folder = ROOT / "DeepRegistration"
    wanted = [str(p.relative_to(folder)) for pattern in ("DeepRegistrationLib/models/bundled/*.pt",
                                                         "Resources/Presets/*.json", "Resources/requirements.txt")
              for p in folder.glob(pattern)]
    assert set(wanted) <= set(listed)
    for item in listed:
        assert (folder / item.replace("${MODULE_NAME}", "DeepRegistration")).exists(), item


def test_extension_cmake():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in ("EXTENSION_DEPENDS PyTorch", "EXTENSION_CATEGORY", "add_subdirectory(DeepRegistration)",
                   "add_subdirectory(DeepMetricTraining)", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK",
                   "find_package(Slicer REQUIRED)"):
        assert needle in text
    assert (ROOT / "LICENSE").exists()
    for module in MODULES:
        assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in (ROOT / module / "CMakeLists.txt").read_text()


def test_mrml_is_the_only_library_module_importing_slicer_and_none_imports_qt():
    lib = ROOT / "DeepRegistration" / "DeepRegistrationLib"
    importers = []
    for path in lib.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top not in ("qt", "PySide6", "PyQt5", "ctk"), f"{path} imports {name}"
                if top in ("slicer", "vtk"):
                    importers.append(path.name)
    assert set(importers) == {"mrml.py"}
