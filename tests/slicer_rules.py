"""Slicer's rules for the module files, read from the facts extracted from Slicer's source at each supported
tag (``tests/slicer_facts/<tag>.json``, written by ``scripts/extract_slicer_facts.py``).

Used by the static tests (module files parsed with ``ast``, .ui files as XML) and by the widget harness
(the same connector choice at run time).
"""
from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS_DIR = Path(__file__).resolve().parent / "slicer_facts"
#: The supported Slicer versions: 5.8 and newer stable releases, and the preview (HEAD) slicer-core tracks.
SUPPORTED = ["v5.8.1", "v5.10.0", "v5.12.3", "HEAD"]
MODULES = ["DeepRegistration", "DeepMetricTraining"]


def facts(tag: str) -> dict:
    return json.loads((FACTS_DIR / f"{tag}.json").read_text())


@dataclass(frozen=True)
class ParameterType:
    """What Slicer's connectors look at: the unannotated type and the annotations' class names."""

    base: str              # 'str', 'int', 'float', 'bool', 'pathlib.Path', ... ; 'enum' / 'node' for those kinds
    annotations: tuple = ()


def connector_for(rules: list, widget_class: str, parameter: ParameterType) -> dict:
    """The connector Slicer's ``createGuiConnector`` picks (the first registered one whose ``canRepresent``
    accepts the exact widget class and the type); raises RuntimeError where Slicer would, with its reason."""
    for rule in rules:
        if widget_class not in rule["widgets"]:
            continue
        accepts = (parameter.base in rule["types"] or (parameter.base == "enum" and "enum.Enum" in rule["subclassOf"])
                   or (parameter.base == "node" and rule["mrmlNodes"]))
        if not accepts:
            continue
        for required in rule["requiresAnnotation"]:
            if required not in parameter.annotations:
                raise RuntimeError(f"{rule['connector']} requires the {required} annotation to be used.")
        return rule
    raise RuntimeError(f"Unable to create GUI connector from datatype '{parameter.base}' to widget type "
                       f"'{widget_class}'.")


# --- the module files, parsed ------------------------------------------------------------------------

def module_tree(module: str) -> ast.Module:
    return ast.parse((ROOT / module / f"{module}.py").read_text())


def _enum_names(tree: ast.Module) -> set:
    """Enum classes of the module and the enums made by calling them (functional API)."""
    enums = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("enum.Enum", "Enum") or ast.unparse(b) in enums
                                                  for b in node.bases):
            enums.add(node.name)
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and ast.unparse(node.value.func) in enums | {"enum.Enum"}):
            enums.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return enums


def _parameter_type(annotation, enums: set) -> ParameterType:
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
        first, *rest = annotation.slice.elts
        names = tuple(ast.unparse(a.func if isinstance(a, ast.Call) else a) for a in rest)
        return ParameterType(_parameter_type(first, enums).base, names)
    text = ast.unparse(annotation)
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Union", "typing.Union", "Optional"):
        members = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        if all(ast.unparse(m).startswith("vtkMRML") or ast.unparse(m) == "None" for m in members):
            return ParameterType("node")
    if text.startswith("vtkMRML"):
        return ParameterType("node")
    if text in enums:
        return ParameterType("enum")
    return ParameterType(text)


def parameter_types(module: str) -> dict:
    """name -> ParameterType of the module's @parameterNodeWrapper class."""
    tree = module_tree(module)
    enums = _enum_names(tree)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: _parameter_type(s.annotation, enums) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{module}: no @parameterNodeWrapper class")


def ui_tree(module: str) -> ET.ElementTree:
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")


def ui_bindings(module: str) -> dict:
    """parameter name -> (widget class, widget name) for every widget with a SlicerParameterName."""
    bound = {}
    for widget in ui_tree(module).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (widget.get("class"), widget.get("name"))
    return bound
