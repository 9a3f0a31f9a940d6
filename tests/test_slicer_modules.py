"""The Slicer module files against their .ui files and CMake lists (no Slicer needed: parsed, not run)."""
import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from DeepRegistrationLib.methods import SPECS
from DeepRegistrationLib.rigid.cnn_metric import CNNSettings
from DeepRegistrationLib.rigid.mi import MISettings

DEFAULT_TILE = SPECS["diffeo"].option("tile").default

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["DeepRegistration", "DeepMetricTraining"]


def ui_widgets(module):
    tree = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    widgets = {w.get("name"): w for w in tree.iter("widget") if w.get("name")}
    bound = {}
    for w in widgets.values():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w
    return widgets, bound


def module_source(module):
    return (ROOT / module / f"{module}.py").read_text()


def parameter_fields(module):
    tree = ast.parse(module_source(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", "") == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: s for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_by_the_widget_exists(module):
    widgets, _ = ui_widgets(module)
    used = set(re.findall(r"self\.ui\.(\w+)", module_source(module)))
    assert used, "the widget uses no .ui names?"
    assert used - set(widgets) == set()


@pytest.mark.parametrize("module", MODULES)
def test_every_parameter_is_bound_to_a_widget_and_back(module):
    fields = parameter_fields(module)
    _, bound = ui_widgets(module)
    assert set(fields) == set(bound), (set(fields) ^ set(bound))


@pytest.mark.parametrize("module", MODULES)
def test_choice_parameters_match_combo_items(module):
    fields = parameter_fields(module)
    _, bound = ui_widgets(module)
    tree = ast.parse(module_source(module))
    constants = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, (ast.List, ast.Dict))}
    constants["METHOD_NAMES"] = list(SPECS)  # the method list comes from the library's registry
    for name, stmt in fields.items():
        text = ast.unparse(stmt.annotation)
        m = re.search(r"Choice\((.+)\)\]", text)
        if not m:
            continue
        choices = constants.get(m.group(1)) if m.group(1) in constants else ast.literal_eval(m.group(1))
        items = [i.find("property/string").text for i in bound[name].findall("item")]
        assert items == list(choices), name


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_template(module):
    src = module_source(module)
    for cls in (f"class {module}(ScriptedLoadableModule)", f"class {module}ParameterNode",
                f"class {module}Widget(ScriptedLoadableModuleWidget, VTKObservationMixin)",
                f"class {module}Logic(ScriptedLoadableModuleLogic)", f"class {module}Test(ScriptedLoadableModuleTest)"):
        assert cls in src
    assert f'self.resourcePath("UI/{module}.ui")' in src
    assert "connectGui(self.ui)" in src
    first_lines = "\n".join(line for line in src.splitlines() if line.startswith(("import", "from")))
    assert "torch" not in first_lines, "torch must be imported lazily, after the SlicerPyTorch check"


def test_registration_presets_start_at_the_library_defaults():
    """The panel's method presets (parameter defaults and the .ui's initial values) are the library's defaults,
    so a registration from the panel and one from the CLI or API run the same method."""
    fields = parameter_fields("DeepRegistration")
    _, bound = ui_widgets("DeepRegistration")
    library = {"histogramBins": MISettings().bins, "pyramidLevels": ",".join(map(str, MISettings().levels)),
               "cnnPatches": CNNSettings().patches, "tileSize": DEFAULT_TILE}
    for name, value in library.items():
        assert ast.literal_eval(fields[name].value) == value, name
        ui_value = bound[name].find("property[@name='value']/number")
        ui_value = ui_value if ui_value is not None else bound[name].find("property[@name='text']/string")
        assert ui_value.text == str(value), name
    assert bound["tileSize"].find("property[@name='singleStep']/number").text == "4"   # tiles: multiples of 4


def cmake_list(path, keyword):
    text = path.read_text()
    block = re.search(rf"set\({keyword}\n(.*?)\n  \)", text, re.S)
    assert block, f"{keyword} list not found in {path}"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_cmake_scripts_list_every_library_file():
    listed = cmake_list(ROOT / "DeepRegistration" / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    actual = sorted(str(p.relative_to(ROOT / "DeepRegistration")) for p in
                    (ROOT / "DeepRegistration" / "DeepRegistrationLib").rglob("*.py"))
    assert sorted(s for s in listed if s.startswith("DeepRegistrationLib/")) == actual
    assert "${MODULE_NAME}.py" in listed


def test_cmake_resources_list_ui_icons_and_models():
    listed = cmake_list(ROOT / "DeepRegistration" / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    models = sorted(str(p.relative_to(ROOT / "DeepRegistration")) for p in
                    (ROOT / "DeepRegistration" / "DeepRegistrationLib" / "models" / "bundled").glob("*.pt"))
    assert set(models) <= set(listed)
    for item in listed:
        assert (ROOT / "DeepRegistration" / item.replace("${MODULE_NAME}", "DeepRegistration")).exists(), item


def test_extension_cmake():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in ("EXTENSION_DEPENDS PyTorch", "add_subdirectory(DeepRegistration)",
                   "add_subdirectory(DeepMetricTraining)", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK",
                   "find_package(Slicer REQUIRED)"):
        assert needle in text
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
