"""The Slicer batch script (scripts/slicer_batch.py) on the real Slicer core (``slicer-core`` wheel): every
volume of a scene, or every file of a folder, to a reference through the module logic
(``DeepRegistrationLogic().process``), with the batch's folders, resuming and QA report."""
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="Slicer's core (the slicer-core wheel, CPython 3.11 on Linux) is not installed")

from DeepRegistrationLib import mrml  # noqa: E402
from DeepRegistrationLib.batch.scene import OUTPUT_ATTRIBUTE  # noqa: E402
from DeepRegistrationLib.core.io import read_image  # noqa: E402
from DeepRegistrationLib.data.cohort import write_cohort  # noqa: E402
import slicer_gui_harness as harness  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: a method `register` takes, with a bundled model
DEFORMABLE = "deepsim"
#: the network alone: these tests are about the batch through the module logic; instance optimization has its own
#: tests (tests/test_instance_optimization.py) and costs about 30 times the network's time per pair here
NETWORK_ALONE = ["--param", "iterations=0"]


@pytest.fixture
def script(monkeypatch):
    """scripts/slicer_batch.py imported as Slicer's console would, with the module folder on the path."""
    scene = slicer.vtkMRMLScene()
    harness.install(monkeypatch, scene)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    for name in ("DeepRegistration", "slicer_batch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("slicer_batch"), scene


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder, 3, spacing_mm=8.0)
    return folder


def test_scene_volumes_to_a_reference_through_the_module_logic(script, cohort, tmp_path):
    batch, scene = script
    mrml.image_to_volume_node(read_image(cohort / "fixed.nii.gz"), scene, "template")
    moving = [mrml.image_to_volume_node(read_image(cohort / f"subject_{k:02d}.nii.gz"), scene, f"subject {k}")
              for k in range(2)]
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")          # no voxels: fails alone
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # label maps are left out
    before = [slicer.util.arrayFromVolume(n).copy() for n in moving]
    out = tmp_path / "qa"

    assert batch.main(["--reference", "template", "--out", str(out), "--method", DEFORMABLE, *NETWORK_ALONE]) == 1
    rows = json.loads((out / "report.json").read_text())["pairs"]
    assert [r["id"] for r in rows][0] == "empty" and rows[0]["status"] == "failed"
    assert "no voxels" in rows[0]["error"]
    assert {r["id"] for r in rows} == {"subject_0", "subject_1", "empty"}
    registered = [r for r in rows if r["status"] == "done"]
    assert len(registered) == 2 and all(r["folding_voxels"] == 0 for r in registered)
    assert all((out / r["jacobian"]).is_file() and (out / r["grid"]).is_file() for r in registered)
    for r in registered:     # at 8 mm the model barely moves these images: flagged exactly when NMI dropped
        assert ("similarity worse" in r["flags"]) == (r["nmi_after"] < r["nmi_before"])
    for node, voxels in zip(moving, before):          # inputs unchanged, placed under their result
        assert np.array_equal(slicer.util.arrayFromVolume(node), voxels)
        assert node.GetParentTransformNode().GetAttribute(OUTPUT_ATTRIBUTE)
    assert labels.GetAttribute(OUTPUT_ATTRIBUTE) is None
    stamps = {r["id"]: os.stat(out / "pairs" / r["id"] / "status.json").st_mtime_ns for r in registered}

    # a rerun over the scene (now holding the Jacobian volumes the batch added) redoes only the failed pair
    assert batch.main(["--reference", "template", "--out", str(out), "--method", DEFORMABLE, *NETWORK_ALONE]) == 1
    rows = json.loads((out / "report.json").read_text())["pairs"]
    assert {r["id"] for r in rows} == {"subject_0", "subject_1", "empty"}
    assert {i: os.stat(out / "pairs" / i / "status.json").st_mtime_ns for i in stamps} == stamps


def test_folder_to_a_reference_file_leaves_the_scene_as_it_was(script, cohort, tmp_path):
    batch, scene = script
    nodes_before = scene.GetNumberOfNodes()
    out = tmp_path / "qa"
    argv = ["--reference", str(cohort / "fixed.nii.gz"), "--folder", str(cohort), "--pattern", "subject_*.nii.gz",
            "--out", str(out), "--method", DEFORMABLE, *NETWORK_ALONE]
    assert batch.main(argv) == 0
    assert scene.GetNumberOfNodes() == nodes_before
    assert sorted(p.name for p in (out / "pairs").iterdir()) == ["subject_00", "subject_01", "subject_02"]
    html = (out / "report.html").read_text()
    assert "subject_02" in html and "pairs/subject_02/jacobian.png" in html
