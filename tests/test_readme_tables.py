"""The README's and the method pages' tables agree with benchmarks/results (scripts/readme_tables.py)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)


@pytest.mark.parametrize("document", readme_tables.DOCUMENTS)
def test_tables_agree_with_the_results_files(document):
    text = (ROOT / document).read_text()
    assert readme_tables.BLOCK.search(text), f"{document} has no generated table"
    assert readme_tables.rewrite(text) == text, (
        f"{document}: a table differs from benchmarks/results; run python scripts/readme_tables.py")


def test_every_marked_table_is_known_and_every_results_file_says_how_it_was_made():
    names = {m.group("name") for d in readme_tables.DOCUMENTS
             for m in readme_tables.BLOCK.finditer((ROOT / d).read_text())}
    assert names <= set(readme_tables.TABLES)
    assert "status" in {m.group("name") for m in readme_tables.BLOCK.finditer((ROOT / "README.md").read_text())}
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        record = json.loads(path.read_text())
        assert record["command"].startswith(("python benchmarks/", "OMP_NUM_THREADS=")), path.name
        assert record["commit"] and record["date"] and record["machine"] and record["results"], path.name


def test_a_new_results_file_drops_in(tmp_path):
    """A table renders from whatever results file is present; a missing one says how to make it."""
    text = "before\n<!-- table:rigid-nmi -->\nold\n<!-- /table -->\nafter\n"
    assert "No results file yet: `benchmarks/results/rigid_nmi_accuracy.json`" in readme_tables.rewrite(text, tmp_path)
    stat = {"mean": 0.5, "sd": 0.1}
    row = {"task": "T1-T2", "cases": 3, "seconds_per_case": 2.0, "seconds_transform_per_case": 1.6,
           "recovered_below_2mm_percent": 100.0, **{c: stat for c, _ in readme_tables.RIGID_COLUMNS}}
    record = {"command": "python benchmarks/accuracy/rigid_nmi_accuracy.py --cases 3", "commit": "0" * 40,
              "dirty": False, "date": "2026-12-07T00:00:00+00:00", "machine": {"cpu": "x86_64", "cpu_count": 2},
              "results": [{**row, "method": "NMI (ours, default call)"},
                          {**row, "method": "NMI (ours, registration alone)", "seconds_transform_per_case": 0.8},
                          {**row, "method": "SimpleITK", "seconds_per_case": 1.0, "seconds_transform_per_case": 1.0}]}
    (tmp_path / "rigid_nmi_accuracy.json").write_text(json.dumps(record))
    new = readme_tables.rewrite(text, tmp_path)
    assert new.startswith("before\n<!-- table:rigid-nmi -->\n| task | method |")
    assert new.endswith("<!-- /table -->\nafter\n")
    assert "| T1-T2 | NMI (ours, default call) | 0.50 ± 0.10 |" in new and "| 1.6 / 2.0 |" in new and "--cases 3" in new
    assert readme_tables.rewrite(new, tmp_path) == new
    status = readme_tables.render("status", tmp_path)
    assert ("SimpleITK takes 1.25–1.25 of the time of our registration alone" in status
            and "0.62–0.62 of our default call" in status) and "none yet (`dirnet_vs_bspline.json`)" in status
