"""Extract, from Slicer's source at each supported tag, the facts the module files are tested against.

Writes ``tests/slicer_facts/<tag>.json`` per tag: the public names of ``slicer.util``, ``slicer.i18n``,
``slicer.packaging`` (absent before 5.11), ``slicer.parameterNodeWrapper``,
``slicer.ScriptedLoadableModule`` and the ``SampleData`` module, with its sample names; the MRML/qMRML/Slicer class names (from header files); the
Q_PROPERTY names of the qMRML widgets; the public methods of every ``vtkMRML*``/``vtkSlicer*`` class with its base
class (declarations and VTK's Get/Set/Boolean macros in the public sections of its header, what VTK's Python
wrapping exposes); the logic class of each loadable module (``slicer.modules.<name>.logic()``, from
``qSlicer<Name>Module::createLogic``); and the GUI-connector rules of
``parameterNodeWrapper/guiConnectors.py`` (which exact widget classes connect to which parameter
types, and which annotation a connector requires). Nothing is copied but names.

    python scripts/extract_slicer_facts.py /path/to/Slicer/.git v5.8.1 v5.10.0 v5.12.3 HEAD

The git directory is a clone of https://github.com/Slicer/Slicer; the tests need no network.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "slicer_facts"
WRAPPER = "Base/Python/slicer/parameterNodeWrapper"
CLASS_HEADER = re.compile(r"/((?:vtkMRML|qMRML|vtkSlicer|qSlicer)\w+)\.h$")
QT_PROPERTY = re.compile(r"Q_PROPERTY\(\s*[\w:<>, ]+?\s+(\w+)\s+READ")


def git(gitdir: str, *args) -> str:
    return subprocess.run(["git", "--git-dir", gitdir, *args], check=True, capture_output=True, text=True).stdout


def show(gitdir: str, tag: str, path: str):
    try:
        return git(gitdir, "show", f"{tag}:{path}")
    except subprocess.CalledProcessError:
        return None


def public_names(source: str) -> list:
    """Top-level functions, classes and assigned names not starting with '_'."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return sorted(n for n in names if not n.startswith("_"))


def exported_names(source: str) -> list:
    """``__all__`` when the module sets it, else its public names."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    return public_names(source)


def wrapper_names(gitdir: str, tag: str) -> list:
    """What ``from slicer.parameterNodeWrapper import X`` can import (its __init__'s star and named imports)."""
    init = ast.parse(show(gitdir, tag, f"{WRAPPER}/__init__.py"))
    names = set()
    for node in init.body:
        if isinstance(node, ast.ImportFrom):
            if node.names[0].name == "*":
                names.update(exported_names(show(gitdir, tag, f"{WRAPPER}/{node.module}.py")))
            else:
                names.update(a.asname or a.name for a in node.names)
    return sorted(names)


def _dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _call_of(node, function: str) -> bool:
    return isinstance(node, ast.Call) and _dotted(node.func) == function


def connector_rules(source: str) -> list:
    """Per registered connector: the exact widget classes (``type(widget) == / in``), the parameter types
    (``unannotatedType(datatype) == / in``, ``issubclass(..., X)`` as a base class, ``isNodeOrUnionOfNodes``
    as 'MRMLNode'), and the annotations ``create`` raises without."""
    rules = []
    for cls in ast.parse(source).body:
        if not (isinstance(cls, ast.ClassDef) and any(_dotted(d) == "parameterNodeGuiConnector" for d in cls.decorator_list)):
            continue
        methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
        widgets, types, bases, nodes = set(), set(), set(), False
        for node in ast.walk(methods["canRepresent"]):
            if isinstance(node, ast.Compare):
                values = [v for c in node.comparators for v in (c.elts if isinstance(c, ast.Tuple) else [c])]
                if _call_of(node.left, "type"):
                    widgets.update(_dotted(v) for v in values)
                elif _call_of(node.left, "unannotatedType"):
                    types.update(_dotted(v) for v in values)
            elif _call_of(node, "issubclass") and _call_of(node.args[0], "unannotatedType"):
                bases.add(_dotted(node.args[1]))
            elif _call_of(node, "isNodeOrUnionOfNodes"):
                nodes = True
        required = sorted({m for node in ast.walk(methods["create"]) if isinstance(node, ast.Raise)
                           for m in re.findall(r"the (\w+) annotation", ast.unparse(node))})
        if widgets:
            rules.append({"connector": cls.name, "widgets": sorted(w.split(".")[-1] for w in widgets),
                          "types": sorted(types), "subclassOf": sorted(bases), "mrmlNodes": nodes,
                          "requiresAnnotation": required})
    return rules


def class_facts(gitdir: str, tag: str) -> tuple:
    headers = git(gitdir, "ls-tree", "-r", "--name-only", tag, "Libs", "Base", "Modules").splitlines()
    classes, properties = set(), {}
    for path in headers:
        m = CLASS_HEADER.search(path)
        if not m:
            continue
        classes.add(m.group(1))
        if m.group(1).startswith("qMRML") and "/Widgets/" in path:
            props = QT_PROPERTY.findall(show(gitdir, tag, path) or "")
            if props:
                properties[m.group(1)] = sorted(set(props))
    return sorted(classes), properties


#: a declaration ``[qualifiers] type name(`` at the start of a statement (after comments are removed)
DECLARATION = re.compile(r"^\s*(?:(?:virtual|static|inline|explicit|friend|VTK_\w+)\s+)*"
                         r"(?:[\w:]+(?:<[^;()]*>)?[\s*&]+)+(~?[A-Za-z_]\w*)\s*\(", re.M)
ACCESS = re.compile(r"^\s*(public|protected|private)\s*:", re.M)
ACCESSOR_MACRO = re.compile(r"\bvtk(Get|Set)\w*Macro\(\s*(\w+)")
BOOLEAN_MACRO = re.compile(r"\bvtkBooleanMacro\(\s*(\w+)")
TYPE_MACRO = re.compile(r"\bvtkTypeMacro\(\s*(\w+)\s*,\s*(\w+)\s*\)")
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
CREATE_LOGIC = re.compile(r"qSlicer(\w+)Module::createLogic\(\)\s*\{[^}]*?\breturn\s+(vtkSlicer\w+)::New\(\)", re.S)


def class_methods(header: str, name: str) -> dict:
    """The base class and the public method names of class ``name`` as VTK's Python wrapping shows them:
    declarations and Get/Set/Boolean macros in its public sections (constructors, destructors, operators
    and names starting with '_' left out)."""
    text = COMMENT.sub("", header)
    start = re.search(rf"\bclass\s+(?:\w+\s+)?{name}\s*(?::\s*public\s+([\w:]+))?\s*\{{", text)
    if not start:
        return {}
    body, depth, end = text[start.end():], 1, 0
    for end, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            break
    body = body[:end]
    top = re.sub(r"\{[^{}]*\}", ";", body)   # inline bodies (repeatedly, innermost first): declarations stay
    while top != body:
        body, top = top, re.sub(r"\{[^{}]*\}", ";", top)
    methods, public = set(), False
    pieces = ACCESS.split(top)
    for i, piece in enumerate(pieces):
        if piece in ("public", "protected", "private"):
            public = piece == "public"
            continue
        if not public:
            continue
        methods.update(DECLARATION.findall(piece))
        methods.update(kind + field for kind, field in ACCESSOR_MACRO.findall(piece))
        methods.update(field + suffix for field in BOOLEAN_MACRO.findall(piece) for suffix in ("On", "Off"))
    base = TYPE_MACRO.search(top)
    methods = sorted(m for m in methods if m != name and not m.startswith(("~", "_", "operator")))
    return {"base": base.group(2) if base else (start.group(1) or ""), "methods": methods}


def method_facts(gitdir: str, tag: str) -> dict:
    """{class: {"base", "methods"}} for every vtkMRML*/vtkSlicer* header of Libs, Base and Modules."""
    headers = git(gitdir, "ls-tree", "-r", "--name-only", tag, "Libs", "Base", "Modules").splitlines()
    out = {}
    for path in headers:
        m = CLASS_HEADER.search(path)
        if m and m.group(1).startswith(("vtkMRML", "vtkSlicer")):
            found = class_methods(show(gitdir, tag, path) or "", m.group(1))
            if found:
                out[m.group(1)] = found
    return out


def module_logics(gitdir: str, tag: str) -> dict:
    """``slicer.modules.<name>.logic()``'s class per loadable module (``qSlicer<Name>Module::createLogic``)."""
    sources = git(gitdir, "ls-tree", "-r", "--name-only", tag, "Modules/Loadable").splitlines()
    out = {}
    for path in sources:
        if re.search(r"/qSlicer\w+Module\.cxx$", path):
            for module, logic in CREATE_LOGIC.findall(show(gitdir, tag, path) or ""):
                out[module.lower()] = logic
    return out


SAMPLE = re.compile(r'\(\s*"(\w+)",\s*None,\s*TESTING_DATA_URL')


def facts(gitdir: str, tag: str) -> dict:
    packaging = show(gitdir, tag, "Base/Python/slicer/packaging.py")
    sample_data = show(gitdir, tag, "Modules/Scripted/SampleData/SampleData.py")
    classes, properties = class_facts(gitdir, tag)
    return {
        "tag": tag,
        "commit": git(gitdir, "rev-parse", f"{tag}^{{commit}}").strip(),
        "slicer.util": public_names(show(gitdir, tag, "Base/Python/slicer/util.py")),
        "slicer.i18n": public_names(show(gitdir, tag, "Base/Python/slicer/i18n.py")),
        "slicer.packaging": public_names(packaging) if packaging else None,
        "slicer.parameterNodeWrapper": wrapper_names(gitdir, tag),
        "slicer.ScriptedLoadableModule": public_names(show(gitdir, tag, "Base/Python/slicer/ScriptedLoadableModule.py")),
        "SampleData": public_names(sample_data),
        "sampleNames": sorted(set(SAMPLE.findall(sample_data))),
        "classes": classes,
        "widgetProperties": properties,
        "methods": method_facts(gitdir, tag),
        "moduleLogics": module_logics(gitdir, tag),
        "guiConnectors": connector_rules(show(gitdir, tag, f"{WRAPPER}/guiConnectors.py")),
    }


def main(gitdir: str, tags: list) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for tag in tags:
        data = facts(gitdir, tag)
        (OUT / f"{tag}.json").write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
        print(tag, data["commit"][:10], len(data["slicer.util"]), "util names,", len(data["classes"]), "classes,",
              len(data["guiConnectors"]), "connectors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
