"""The library's folders stand in the floors of docs/DEVELOPING.md: every import (lazy ones included) goes to a
lower floor, so no folder imports a folder that imports it back."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "DeepRegistration" / "DeepRegistrationLib"
PACKAGE = LIB.name


def documented_floors(text: str) -> dict:
    """{unit: floor} from the table of the "Floors" section: a row ``| 3 | `metrics`, `x` | why |``."""
    section = text.split("\n## Floors\n", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for floor, names in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M):
        for name in re.findall(r"`([^`]+)`", names):
            floors[name] = int(floor)
    return floors


def unit_of(module: str) -> str:
    """The folder or top-level module a dotted module name belongs to (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = (PACKAGE,) + path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(text: str, module: str, is_package: bool = False) -> set:
    """Absolute names of the library modules the source ``text`` of ``module`` imports, anywhere in it."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            # ``from . import store`` and ``from .. import mrml`` import modules: count the names too
            found |= {stem} | {f"{stem}.{a.name}" for a in node.names}
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def import_edges() -> list:
    """(importing unit, imported unit, importing file) for every import between two different units."""
    units = {p.stem if p.is_file() else p.name for p in LIB.iterdir() if p.suffix == ".py" or p.is_dir()}
    edges = []
    for path in sorted(LIB.rglob("*.py")):
        source = unit_of(module_name(path)) if path.parent != LIB else path.stem
        names = imported_modules(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
        for target in {unit_of(m) for m in names}:
            if target in units and target != source:
                edges.append((source, target, path.relative_to(LIB).as_posix()))
    return edges


@pytest.fixture(scope="module")
def floors():
    return documented_floors((ROOT / "docs" / "DEVELOPING.md").read_text(encoding="utf-8"))


def test_every_folder_and_module_has_a_floor(floors):
    units = {p.stem if p.is_file() else p.name for p in LIB.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert units - set(floors) == set(), "give these a row in the Floors table of docs/DEVELOPING.md"
    assert set(floors) - units == set(), "the Floors table names folders or modules that do not exist"


def test_every_import_goes_to_a_lower_floor(floors):
    upward = [f"{file}: {source} (floor {floors[source]}) imports {target} (floor {floors[target]})"
              for source, target, file in import_edges() if floors[target] >= floors[source]]
    assert upward == []


def test_no_folder_imports_one_that_imports_it_back():
    pairs = {(s, t) for s, t, _ in import_edges()}
    assert sorted((s, t) for s, t in pairs if (t, s) in pairs) == []


def test_the_walk_sees_lazy_relative_and_absolute_imports(floors):
    """An import inside a function, ``from .. import x`` and an absolute import are all found (the cycles
    hid in lazy imports)."""
    text = ("from . import sources\n"
            "def f():\n    from ..deformable import lddmm\n"
            "def g():\n    import DeepRegistrationLib.api\n")
    names = imported_modules(text, f"{PACKAGE}.data.probe")
    assert {f"{PACKAGE}.data.sources", f"{PACKAGE}.deformable.lddmm", f"{PACKAGE}.api"} <= names
    assert {unit_of(m) for m in names} == {"data", "deformable", "api"}
    assert floors["deformable"] > floors["data"] and floors["api"] > floors["data"]   # both would be refused
    assert imported_modules("from .. import __version__\n", f"{PACKAGE}.models.model_file") >= {PACKAGE}
