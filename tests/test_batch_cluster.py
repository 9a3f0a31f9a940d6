"""Cohort batches on a real Dask ``LocalCluster`` (two worker processes): the reliability target (a broken
pair fails alone; an interrupted batch redoes only its unfinished and failed pairs), Ctrl-C on the
command line, and the QA report in a real browser (headless Chromium)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="the batch extra (dask[distributed]) is not installed")

from DeepRegistrationLib.batch import store  # noqa: E402
from DeepRegistrationLib.batch.runner import run_batch  # noqa: E402
from DeepRegistrationLib.cli import main  # noqa: E402
from DeepRegistrationLib.core.errors import Cancelled  # noqa: E402
from DeepRegistrationLib.data.cohort import write_cohort  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: method names as `register` takes them (the rigid one becomes "nmi" with the method rename)
RIGID = "nmi"
#: the cohort's pairs start close: no rotation search, to keep the test short (on these five pairs the
#: default search start reached the same NMI as init=none when checked by hand)
RIGID_PARAMS = {"init": "none"}
DEFORMABLE = "deepsim"
#: the network alone: these tests are about the batch, not instance optimization (tests/test_instance_optimization.py),
#: which costs about 30 times the network's time per pair here
DEFORMABLE_PARAMS = {"iterations": "0"}
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, as the embedded default makes them on a 2-core machine."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five synthetic subjects (SPM avg152 T1 at 8 mm, deformed and moved) and one broken file."""
    folder = tmp_path_factory.mktemp("cohort")
    csv = write_cohort(folder, 5, spacing_mm=8.0)
    (folder / "broken.nii.gz").write_bytes(b"this is not an image")
    with open(csv, "a") as f:
        f.write("fixed.nii.gz,broken.nii.gz\n")
    return csv


def pair_folders(out):
    return {p.name for p in (Path(out) / "pairs").iterdir() if not p.name.startswith(".")}


def partials(out):
    return [p.name for p in (Path(out) / "pairs").iterdir() if p.name.startswith(".")]


def done_pairs(out):
    return {name for name in pair_folders(out)
            if store.read_status(Path(out) / "pairs" / name).get("status") == "done"}


def test_broken_pair_fails_alone_and_an_interrupted_batch_redoes_only_the_rest(cluster, cohort, tmp_path):
    good = {f"subject_{k:02d}" for k in range(5)}
    out = tmp_path / "out"

    finished = []

    def interrupt_after_two(fraction, message):    # Ctrl-C while the batch runs, after two pairs finished
        finished.append(message)
        if len(finished) == 3:                      # the first call announces the run
            raise KeyboardInterrupt

    with pytest.raises(Cancelled, match="run the same command again"):
        run_batch(cohort, RIGID, out, RIGID_PARAMS, scheduler=cluster, threads_per_worker=1, progress=interrupt_after_two)
    first = done_pairs(out)
    assert not partials(out), "an interrupted pair left a temporary folder"
    assert 1 <= len(first) <= 4
    for name in first:
        assert store.is_complete(out, name, store.read_status(out / "pairs" / name)["hash"])
    stamps = {name: os.stat(out / "pairs" / name / "status.json").st_mtime_ns for name in first}
    assert (out / "report.html").exists()

    second = run_batch(cohort, RIGID, out, RIGID_PARAMS, scheduler=cluster, threads_per_worker=1)
    assert set(second.skipped) == first
    assert set(second.done) == good - first
    assert second.failed == ["broken"] and not second.ok
    assert done_pairs(out) == good
    assert {n: os.stat(out / "pairs" / n / "status.json").st_mtime_ns for n in first} == stamps   # untouched
    rows = second.report["rows"]
    assert rows[0]["id"] == "broken" and rows[0]["flags"] == ["failed"]
    assert "cannot read" in rows[0]["error"]
    registered = [r for r in rows if r["status"] == "done"]
    assert len(registered) == 5 and all(r["nmi_after"] > r["nmi_before"] for r in registered)
    assert json.loads((out / "report.json").read_text())["pairs"][0]["id"] == "broken"

    third = run_batch(cohort, RIGID, out, RIGID_PARAMS, scheduler=cluster, threads_per_worker=1)   # retries only the failed one
    assert set(third.skipped) == good and third.failed == ["broken"] and not third.done


def test_changed_parameters_rerun_only_that_pair(cluster, cohort, tmp_path):
    out = tmp_path / "out"
    rows = cohort.read_text().splitlines()[:3]
    csv = tmp_path / "pairs.csv"
    csv.write_text("\n".join(rows).replace("fixed.nii.gz", str(cohort.parent / "fixed.nii.gz"))
                   .replace("subject_", str(cohort.parent / "subject_")) + "\n")
    assert len(run_batch(csv, DEFORMABLE, out, DEFORMABLE_PARAMS, scheduler=cluster).done) == 2
    text = csv.read_text().splitlines()
    text[0] += ",params"
    text[1] += ",smoothing=0"
    text[2] += ","
    csv.write_text("\n".join(text) + "\n")
    again = run_batch(csv, DEFORMABLE, out, DEFORMABLE_PARAMS, scheduler=cluster)
    assert again.skipped == ["subject_01"]
    assert again.failed == ["subject_00"]          # deepsim has no 'smoothing' option: recorded, not raised
    assert "smoothing" in again.report["rows"][0]["error"]


def test_ctrl_c_on_the_command_line_stops_cleanly(cluster, cohort, tmp_path, capsys):
    """A real SIGINT to the process group of `deepregistration batch` (embedded cluster) while pairs run;
    then the same command on the test cluster runs the rest and exits with 1 (the broken pair)."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "DeepRegistration"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "DeepRegistrationLib.cli", "batch", str(cohort), "--method", RIGID,
               "--out", str(out), "--workers", "2", "--threads-per-worker", "1", "--quiet"]
    # as from a terminal: SIGINT handled (a child inherits "ignored" from a parent that ignores it)
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "pairs").is_dir() and done_pairs(out)):    # a registered pair
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "run the same command again" in stderr
    assert not partials(out) and (out / "report.html").exists()
    assert len(done_pairs(out)) < 5
    first = done_pairs(out)
    assert main(command[3:] + ["--scheduler", cluster]) == 1
    printed = capsys.readouterr().out
    assert f"{5 - len(first)} registered, {len(first)} already complete, 1 failed" in printed
    assert "failed broken: InputError" in printed
    assert done_pairs(out) == {f"subject_{k:02d}" for k in range(5)}


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def table_ids(driver):
    return driver.execute_script("return Array.from(document.querySelectorAll('#pairs tbody tr')).map(r => r.id)")


def column(driver, header):
    return driver.execute_script(
        "var heads = Array.from(document.querySelectorAll('#pairs th')).map(h => h.textContent.trim());"
        "var col = heads.indexOf(arguments[0]);"
        "return Array.from(document.querySelectorAll('#pairs tbody tr')).map(r => r.cells[col].getAttribute('data-sort'));",
        header)


def test_report_opens_in_a_browser_with_every_thumbnail_and_sorts(cluster, cohort, tmp_path, browser):
    """A deformable batch with one rigid row and the broken pair, opened from disk in headless Chromium."""
    from selenium.webdriver.common.by import By

    lines = cohort.read_text().splitlines()
    csv = cohort.parent / "mixed.csv"
    csv.write_text("fixed,moving,method\n" + "\n".join(f"{line}," for line in lines[1:4])
                   + f"\n{lines[4]},{RIGID}\nfixed.nii.gz,broken.nii.gz,\n")
    result = run_batch(csv, DEFORMABLE, tmp_path / "out", DEFORMABLE_PARAMS, scheduler=cluster)
    assert len(result.done) == 4 and result.failed == ["broken"]

    browser.get((tmp_path / "out" / "report.html").as_uri())
    browser.set_script_timeout(60)
    images = browser.execute_async_script(   # scroll each image into view (they load lazily) and decode it
        "var done = arguments[arguments.length - 1], images = Array.from(document.images);"
        "Promise.all(images.map(i => { i.scrollIntoView(); return i.decode().then(() => true, () => false); }))"
        ".then(ok => done(images.map((i, k) => [i.getAttribute('src'), ok[k], i.naturalWidth])));")
    assert len(images) == 1 + 3 * 3 + 2          # cohort plot; three per deformable pair, no Jacobian for rigid
    assert all(decoded and width > 0 for _, decoded, width in images), images
    before = table_ids(browser)
    assert before[0] == "pair-broken"

    headers = {h.text.split("\n")[0]: h for h in browser.find_elements(By.CSS_SELECTOR, "#pairs th")}
    headers["ΔNMI"].click()
    gains = [float(v) for v in column(browser, "ΔNMI") if v]
    assert gains == sorted(gains) and len(gains) == 4
    assert table_ids(browser)[-1] == "pair-broken"      # no value: last
    headers["pair"].click()
    assert table_ids(browser) == sorted(before)
    headers["pair"].click()
    assert table_ids(browser) == sorted(before, reverse=True)
    headers["#"].click()
    assert table_ids(browser) == before
