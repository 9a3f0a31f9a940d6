"""Cohort batches without a cluster: the pairs CSV, input hashes, the per-pair job and its folder, the QA
report's flags and order. (The Dask runs are in test_batch_cluster.py.)"""
import json

import pytest

from DeepRegistrationLib.batch import report as qa
from DeepRegistrationLib.batch import store
from DeepRegistrationLib.batch.job import attempt, run_pair
from DeepRegistrationLib.batch.pairs import Pair, parse_params, read_pairs_csv
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.data.cohort import write_cohort

#: method names as `register` takes them (the rigid one becomes "nmi" with the method rename)
RIGID = "nmi"
DEFORMABLE = "deepsim"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder, 2, spacing_mm=6.0, labels=True)
    return folder


def write_csv(path, text):
    path.write_text(text)
    return path


def test_pairs_csv_defaults_row_overrides_and_relative_paths(tmp_path):
    csv = write_csv(tmp_path / "pairs.csv", "fixed,moving,method,params,model\n"
                    "t.nii.gz,a.nii.gz,,bins=32,\n"
                    "t.nii.gz,sub/b.nii.gz,deepsim,,my_model.pt\n"
                    "/abs/t.nii.gz,c.nii.gz,,\"levels=2,1;seed=3\",\n")
    pairs = read_pairs_csv(csv, RIGID, {"bins": "60", "max_points": "1000"})
    assert [p.id for p in pairs] == ["a", "b", "c"]
    assert pairs[0].method == RIGID and pairs[0].options == {"bins": "32", "max_points": "1000"}
    assert pairs[1].method == "deepsim" and pairs[1].options == {"models": ["my_model.pt"]}   # no --param of mi
    assert pairs[2].options == {"bins": "60", "max_points": "1000", "levels": "2,1", "seed": "3"}
    assert pairs[1].files["moving"] == str(tmp_path / "sub" / "b.nii.gz")
    assert pairs[2].files["fixed"] == "/abs/t.nii.gz"


def test_pairs_csv_is_checked(tmp_path):
    with pytest.raises(InputError, match="unknown column.*fixed_msk"):
        read_pairs_csv(write_csv(tmp_path / "a.csv", "fixed,moving,fixed_msk\nf,m,x\n"), RIGID)
    with pytest.raises(InputError, match="'fixed' and 'moving'"):
        read_pairs_csv(write_csv(tmp_path / "b.csv", "fixed,mov\nf,m\n"), RIGID)
    with pytest.raises(InputError, match="row 2: empty 'moving'"):
        read_pairs_csv(write_csv(tmp_path / "c.csv", "fixed,moving\nf,m\nf,\n"), RIGID)
    with pytest.raises(InputError, match="ids repeat"):
        read_pairs_csv(write_csv(tmp_path / "d.csv", "id,fixed,moving\nx,f,m\nx,f,n\n"), RIGID)
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_params("bins=3;oops")
    with pytest.raises(InputError, match="lists no pairs"):
        read_pairs_csv(write_csv(tmp_path / "e.csv", "fixed,moving\n"), RIGID)
    # the same moving name twice: ids name the fixed image too
    pairs = read_pairs_csv(write_csv(tmp_path / "f.csv", "fixed,moving\nt1.nii,s.nii\nt2.nii,s.nii\n"), RIGID)
    assert [p.id for p in pairs] == ["s-to-t1", "s-to-t2"]


def test_hash_follows_contents_and_settings(cohort, tmp_path):
    files = {"fixed": str(cohort / "fixed.nii.gz"), "moving": str(cohort / "subject_00.nii.gz")}
    base = store.pair_hash(Pair("p", files, RIGID, {"bins": "60"}))
    assert store.pair_hash(Pair("p", dict(files), RIGID, {"bins": "60"})) == base
    assert store.pair_hash(Pair("p", files, RIGID, {"bins": "32"})) != base
    assert store.pair_hash(Pair("p", files, DEFORMABLE, {})) != store.pair_hash(Pair("p", files, RIGID, {}))
    copy = tmp_path / "moving.nii.gz"
    copy.write_bytes((cohort / "subject_00.nii.gz").read_bytes())
    assert store.pair_hash(Pair("q", {**files, "moving": str(copy)}, RIGID, {"bins": "60"})) == base  # contents
    copy.write_bytes((cohort / "subject_01.nii.gz").read_bytes())
    assert store.pair_hash(Pair("q", {**files, "moving": str(copy)}, RIGID, {"bins": "60"})) != base


def test_job_writes_a_complete_pair_folder_with_dice(cohort, tmp_path):
    pair = Pair("s0", {"fixed": str(cohort / "fixed.nii.gz"), "moving": str(cohort / "subject_00.nii.gz"),
                       "fixed_labels": str(cohort / "fixed_labels.nii.gz"),
                       "moving_labels": str(cohort / "subject_00_labels.nii.gz")}, DEFORMABLE,
                {"iterations": "3"})     # instance optimization on, short (its own tests go further)
    digest = store.pair_hash(pair)
    status = run_pair(pair, digest, tmp_path, threads=1)
    folder = tmp_path / "pairs" / "s0"
    assert status["status"] == "done", status.get("error")
    assert store.is_complete(tmp_path, "s0", digest) and not store.is_complete(tmp_path, "s0", "other")
    assert set(status["outputs"]) == {"transform", "volume", "jacobian", "report"}
    assert {status["thumbnails"][k] for k in ("checkerboard", "jacobian", "grid")} <= {p.name for p in folder.iterdir()}
    report = json.loads((folder / "report.json").read_text())
    assert 0.3 < report["dice_before"] < 1.0 and report["dice_labels"] == 3
    assert report["dice_after"] >= report["dice_before"] - 0.02
    log = (folder / "log.txt").read_text()
    assert "predicting the deformation" in log and "instance optimization, level 2/2" in log
    assert not [p for p in (tmp_path / "pairs").iterdir() if p.name.startswith(".")]
    # a missing output file makes the pair incomplete
    (folder / "registered.nii.gz").unlink()
    assert not store.is_complete(tmp_path, "s0", digest)


def test_job_records_a_failure_and_a_stop_leaves_nothing(cohort, tmp_path):
    missing = Pair("gone", {"fixed": str(cohort / "fixed.nii.gz"), "moving": str(tmp_path / "nope.nii.gz")}, RIGID)
    status = run_pair(missing, store.pair_hash(missing), tmp_path)
    assert status["status"] == "failed" and "file not found" in status["error"]
    folder = tmp_path / "pairs" / "gone"
    assert {p.name for p in folder.iterdir()} == {"log.txt", "status.json"}
    assert "InputError" in (folder / "log.txt").read_text()
    assert store.read_status(folder)["error"] == status["error"]

    good = Pair("stopped", {"fixed": str(cohort / "fixed.nii.gz"), "moving": str(cohort / "subject_01.nii.gz")},
                RIGID)
    stop = tmp_path / "stop"
    stop.touch()
    assert run_pair(good, "h", tmp_path, stop_file=stop)["status"] == "cancelled"   # not started after a stop
    checks = []

    def stop_requested():      # the stop request arrives while the registration runs
        checks.append(1)
        return len(checks) > 3

    status = attempt(tmp_path, "stopped", {}, lambda folder, progress, log: _register(good, folder, progress),
                     stop_requested)
    assert status["status"] == "cancelled" and len(checks) == 4
    assert not (tmp_path / "pairs" / "stopped").exists()
    assert not [p for p in (tmp_path / "pairs").iterdir() if p.name.startswith(".")]


def _register(pair, folder, progress):
    from DeepRegistrationLib.api import register
    from DeepRegistrationLib.core.io import read_image
    (folder / "partial-output.bin").write_bytes(b"half")
    register(read_image(pair.files["fixed"]), read_image(pair.files["moving"]), pair.method, "cpu", progress)
    return {}


def _row(pair_id, status="done", **report):
    base = {"nmi64_before": 1.20, "nmi64_after": 1.25, "folding_voxels": 0, "folding_percent": 0.0,
            "fixed_grid": {"spacing": [2.0, 2.0, 3.0]}}
    return qa.pair_row(pair_id, {"status": status, "error": "InputError: bad" if status == "failed" else ""},
                       {**base, **report} if status == "done" else {})


def test_flags_follow_the_stated_rules_and_flagged_pairs_come_first():
    rows = qa.ordered([
        _row("good"),
        _row("worse", nmi64_after=1.19),
        _row("folded", folding_voxels=12, folding_percent=0.01),
        _row("folded-and-worse", nmi64_after=1.1, folding_voxels=3, folding_percent=0.002),
        _row("inverse", inverse_consistency_mm={"mean": 1.2, "max": 3.0}),         # > 0.5 x 2 mm
        _row("inverse-ok", inverse_consistency_mm={"mean": 0.9, "max": 3.0}),
        _row("unsure", confidence=0.3),
        _row("sure", confidence={"value": 0.9, "flagged": False}),
        _row("flagged-by-method", flagged=True),
        _row("broken", status="failed"),
        qa.pair_row("never", {}, {}),
    ])
    order = [r["id"] for r in rows]
    assert order[:2] == ["broken", "folded-and-worse"]
    assert set(order[2:7]) == {"folded", "worse", "inverse", "unsure", "flagged-by-method"}
    assert order.index("folded") < order.index("worse")                 # more folding first among single flags
    assert order[7:] == ["good", "inverse-ok", "sure", "never"]          # the rest in batch order, not run last
    flags = {r["id"]: r["flags"] for r in rows}
    assert flags["folded-and-worse"] == [qa.FOLDING, qa.WORSE] and flags["broken"] == [qa.FAILED]
    assert flags["inverse"] == [qa.INVERSE] and flags["unsure"] == [qa.LOW_CONFIDENCE]
    assert flags["flagged-by-method"] == [qa.LOW_CONFIDENCE] and not flags["sure"] and not flags["good"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    by_id = {r["id"]: r for r in rows}
    assert by_id["good"]["confidence"] == "" and by_id["sure"]["confidence"] == "0.9"
    assert by_id["never"]["status"] == "not run"
    html = qa.render_html(rows, "t")
    for name, _ in qa.RULES:
        assert f"<b>{name}</b>" in html
    assert html.index('id="pair-broken"') < html.index('id="pair-good"')
    assert "http" not in html.replace("http-equiv", "")        # nothing loaded from the network


def test_running_out_of_memory_is_recorded_as_the_pairs_error(cohort, tmp_path, monkeypatch):
    import importlib

    from DeepRegistrationLib.methods import SPECS

    def exhausted(fixed, moving, ctx):
        raise MemoryError
    module = importlib.import_module(SPECS[RIGID].module)
    monkeypatch.setattr(module, "run", exhausted)
    pair = Pair("big", {"fixed": str(cohort / "fixed.nii.gz"), "moving": str(cohort / "subject_00.nii.gz")}, RIGID)
    status = run_pair(pair, store.pair_hash(pair), tmp_path)
    assert status["status"] == "failed"
    assert status["error"].startswith("InputError: out of memory on cpu")
    assert {p.name for p in (tmp_path / "pairs" / "big").iterdir()} == {"log.txt", "status.json"}
