"""The QA report of a 20-pair batch with one pair gone wrong on purpose, and its browser screenshot.

Twenty synthetic subjects (SPM avg152 T1 at 4 mm, deformed and moved: ``data.cohort``) are registered to
the template with the bundled DeepSim model; for subject 07 the CSV names the T2 template instead of the
subject's T1 (a modality mix-up), which the T1-trained model cannot register. The report is opened in
headless Chromium and the top of the page saved as ``docs/figures/batch_report.png``.

    python scripts/batch_report_figure.py /tmp/batch-figure docs/figures/batch_report.png
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from DeepRegistrationLib.batch.runner import run_batch
from DeepRegistrationLib.core.io import write_image
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.cohort import template, write_cohort

METHOD = "deepsim"
MIXED_UP = 7


def screenshot(html: Path, png: Path, width: int = 1600, height: int = 1150) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(html.resolve().as_uri())
        driver.set_script_timeout(60)
        driver.execute_async_script("var done = arguments[arguments.length - 1], images = Array.from(document.images);"
                                    "images.forEach(i => { i.loading = 'eager'; });"
                                    "Promise.all(images.map(i => i.decode().catch(() => 0))).then(() => done(true));")
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main(work: str, png: str) -> None:
    work = Path(work)
    csv = write_cohort(work / "data", 20, spacing_mm=4.0, seed=1)
    fixed = template(4.0)
    write_image(warp(sources.spm_avg152("T2"), fixed.grid), work / "data" / "T2_template.nii.gz")
    lines = csv.read_text().splitlines()
    lines[1 + MIXED_UP] = lines[1 + MIXED_UP].replace(f"subject_{MIXED_UP:02d}.nii.gz", "T2_template.nii.gz")
    lines[0] = "id," + lines[0]
    lines[1:] = [f"subject_{k:02d}," + line for k, line in enumerate(lines[1:])]
    csv.write_text("\n".join(lines) + "\n")
    result = run_batch(csv, METHOD, work / "out", workers=2, threads_per_worker=1,
                       title="20 subjects to the SPM T1 template (deepsim)")
    rows = result.report["rows"]
    print("first rows:", [(r["id"], r["flags"]) for r in rows[:3]])
    screenshot(Path(result.report["html"]), Path(png))


if __name__ == "__main__":
    main(*sys.argv[1:3])
