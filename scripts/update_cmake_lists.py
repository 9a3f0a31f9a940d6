"""Rewrite DeepRegistration/CMakeLists.txt's file lists from the library's and the shared panel code's files (run
after adding files).

    python scripts/update_cmake_lists.py
"""
from pathlib import Path

MODULE = Path(__file__).resolve().parent.parent / "DeepRegistration"

TEMPLATE = """#-----------------------------------------------------------------------------
set(MODULE_NAME DeepRegistration)

#-----------------------------------------------------------------------------
set(MODULE_PYTHON_SCRIPTS
{scripts}
  )

set(MODULE_PYTHON_RESOURCES
{resources}
  )

#-----------------------------------------------------------------------------
slicerMacroBuildScriptedModule(
  NAME ${{MODULE_NAME}}
  SCRIPTS ${{MODULE_PYTHON_SCRIPTS}}
  RESOURCES ${{MODULE_PYTHON_RESOURCES}}
  WITH_GENERIC_TESTS
  )

#-----------------------------------------------------------------------------
if(BUILD_TESTING)
  # Register the unittest subclass in the main script as a ctest.
  # Note that the test will also be available at runtime.
  slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py)
endif()
"""


def main() -> None:
    lib = MODULE / "DeepRegistrationLib"
    scripts = ["${MODULE_NAME}.py"] + sorted(str(p.relative_to(MODULE)) for package in (lib, MODULE / "DeepRegistrationPanels")
                                             for p in package.rglob("*.py"))
    resources = ["Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "Resources/requirements.txt"]
    resources += sorted(str(p.relative_to(MODULE)) for p in (MODULE / "Resources" / "Presets").glob("*.json"))
    resources += sorted(str(p.relative_to(MODULE)) for p in (lib / "models" / "bundled").glob("*.pt"))
    indent = lambda items: "\n".join(f"  {i}" for i in items)  # noqa: E731
    (MODULE / "CMakeLists.txt").write_text(TEMPLATE.format(scripts=indent(scripts), resources=indent(resources)))


if __name__ == "__main__":
    main()
