"""The two Slicer modules run outside Slicer: widgets built from their .ui files with Qt (PySide6), parameter
nodes and GUI connectors held to Slicer's rules, and the logic on the real Slicer core (slicer-core).

See ``slicer_gui_harness`` for what is real and what stands in for the Slicer application.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="Slicer's core (the slicer-core wheel, CPython 3.11 on Linux) is not installed")
pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed")

import slicer_gui_harness as harness  # noqa: E402
from DeepRegistrationLib import mrml  # noqa: E402
from DeepRegistrationLib.background import CommandSequence  # noqa: E402
from DeepRegistrationLib.cli import build_parser  # noqa: E402
from DeepRegistrationLib.core.transforms import RigidTransform  # noqa: E402
from DeepRegistrationLib.core.warp import warp  # noqa: E402
from DeepRegistrationLib.commands.register import parse_params  # noqa: E402
from DeepRegistrationLib.methods import PIPELINE_PRESETS, SPECS, pipeline_specs  # noqa: E402
from DeepRegistrationLib.pipeline import plan  # noqa: E402
from DeepRegistrationLib.models.model_file import read_metadata  # noqa: E402
from DeepRegistrationLib.data.corpus_pairs import TemplateSubjectSettings, icbm_template  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def scene(monkeypatch):
    s = slicer.vtkMRMLScene()
    harness.install(monkeypatch, s)
    return s


@pytest.fixture(scope="module")
def brain():
    """ICBM 2009a T1 at 4 mm and its tissue labels, and both rigidly moved."""
    image, labels = icbm_template(TemplateSubjectSettings(size_xyz=(40, 48, 40), spacing_mm=4.0))
    shift = RigidTransform([0.0, 0.0, 0.05], [2.0, 0.0, 0.0], image.grid.center_physical())
    return image, labels, warp(image, image.grid, shift), warp(labels, labels.grid, shift, mode="nearest")


SETUP_WITHOUT_DEPENDENCIES = textwrap.dedent("""\
    import importlib.abc, json, sys
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "scipy", "matplotlib"):
                raise ImportError(f"{name} is not installed (refused by the test)")
    sys.meta_path.insert(0, Refuse())
    import numpy as np, pytest, slicer
    import slicer_gui_harness as harness
    scene = slicer.vtkMRMLScene()
    _, errors = harness.install(pytest.MonkeyPatch(), scene)
    fixed = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), np.float32), name="fixed")
    moving = slicer.util.addVolumeFromArray(np.ones((4, 5, 6), np.float32), name="moving")
    out = {}
    mod, widget = harness.build_widget("DeepRegistration", scene)
    out["methods"] = [widget.ui.methodComboBox.itemText(i) for i in range(widget.ui.methodComboBox.count)]
    widget.ui.fixedVolumeSelector.setCurrentNode(fixed)
    widget.ui.movingVolumeSelector.setCurrentNode(moving)
    out["applyEnabled"] = widget.ui.applyButton.enabled
    widget.ui.applyButton.click()
    out["afterApply"] = list(harness.PyTorchUtilsRecorder.calls)
    harness.PyTorchUtilsRecorder.calls.clear()
    _, training = harness.build_widget("DeepMetricTraining", scene)
    training.ui.fixedVolumeSelector.setCurrentNode(fixed)
    training.ui.movingVolumeSelector.setCurrentNode(moving)
    out["startEnabled"] = training.ui.startButton.enabled
    training.ui.startButton.click()
    out["afterStart"] = list(harness.PyTorchUtilsRecorder.calls)
    out["imported"] = sorted(m for m in ("torch", "scipy", "matplotlib") if m in sys.modules)
    out["errors"] = errors
    print("RESULT" + json.dumps(out, default=str))
""")


def test_panels_build_without_torch_scipy_matplotlib_and_reach_the_install_flow():
    """A fresh Slicer with SlicerPyTorch but no torch: both panels build (every GUI connector accepted), and
    Apply / Start lead to SlicerPyTorch's install (here declined), with nothing heavy imported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", SETUP_WITHOUT_DEPENDENCIES], capture_output=True, text=True, env=env,
                         timeout=300, cwd=TESTS)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out["methods"][:len(SPECS)] == [spec.label for spec in SPECS.values()]
    assert out["methods"][len(SPECS) + PIPELINE_PRESETS.index("nmi+nmi-affine+diffeo")] == (
        "Rigid, normalized mutual information → Affine, normalized mutual information → Deformable, diffeomorphic "
        "patch-wise")
    assert len(out["methods"]) == len(SPECS) + len(PIPELINE_PRESETS)
    assert out["applyEnabled"] and out["startEnabled"]
    install = ["torchInstalled", ["installTorch", True, ">=2.0"]]
    assert out["afterApply"] == install and out["afterStart"] == install
    assert out["imported"] == []
    assert out["errors"] == []


def test_requirements_through_pip_ensure_or_pip_install(scene, monkeypatch, tmp_path):
    """5.12 and later: slicer.packaging.pip_ensure; 5.8 and 5.10 (no slicer.packaging): importlib.metadata, a
    confirmation, slicer.util.pip_install."""
    import types
    mod = harness.build_widget("DeepRegistration", scene)[0]
    logic = mod.DeepRegistrationLogic
    harness.PyTorchUtilsRecorder.installed = True
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\npsutil\nnot-an-installed-package-36  # for the test\n")
    assert logic.missingRequirements(str(requirements)) == ["not-an-installed-package-36"]

    real = os.path.join(os.path.dirname(mod.__file__), "Resources", "requirements.txt")
    calls = []
    packaging = types.SimpleNamespace(load_requirements=lambda path: calls.append(("load", path)) or ["r"],
                                      pip_ensure=lambda reqs, **kw: calls.append(("ensure", reqs, kw)))
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    assert logic.ensureDependencies(askConfirmation=False)
    assert calls == [("load", real), ("ensure", ["r"], {"prompt_install": False, "requester": "DeepRegistration"})]

    monkeypatch.delattr(slicer, "packaging")
    installs = []
    monkeypatch.setattr(slicer.util, "pip_install", installs.append, raising=False)
    monkeypatch.setattr(logic, "missingRequirements", staticmethod(lambda path: ["psutil"]))
    assert not logic.ensureDependencies(askConfirmation=True)   # the harness declines the confirmation
    assert installs == []
    assert logic.ensureDependencies(askConfirmation=False) and installs == [["psutil"]]


def test_method_choice_drives_models_masks_and_the_advanced_options(scene):
    """Every method and pipeline: its model list (a pipeline's stage that takes one), masks, and one option field
    per option of each stage (a pipeline's as 'STAGE.OPTION', routed to that stage only)."""
    mod, widget = harness.build_widget("DeepRegistration", scene)
    ui, p = widget.ui, widget._parameterNode
    methods = [*SPECS, *PIPELINE_PRESETS]
    for index, name in enumerate(methods):
        specs = pipeline_specs(name)
        ui.methodComboBox.currentIndex = index
        assert p.method.value == name
        assert harness.unwrap(ui.advancedOptionsFrame).layout().rowCount() == max(sum(len(s.options) for s in specs), 1)
        takers = [s for s in specs if s.model_kind]
        assert ui.modelComboBox.enabled == bool(takers)
        if takers and takers[0].default_model:
            assert ui.modelComboBox.currentText == takers[0].default_model == p.model
        assert ui.fixedMaskSelector.enabled == any("fixed" in s.masks for s in specs)
    ui.methodComboBox.currentIndex = methods.index("nmi+nmi-affine+diffeo")
    assert {"nmi.bins", "nmi-affine.bins", "diffeo.tile"} <= set(widget._optionWidgets)
    widget._optionWidgets["nmi-affine.max_evaluations"].value = 300
    assert json.loads(p.methodOptions)["nmi+nmi-affine+diffeo"] == {"nmi-affine.max_evaluations": 300}
    stages = plan("nmi+nmi-affine+diffeo", mod.DeepRegistrationLogic.optionValues(p))
    assert stages[1].spec.name == "nmi-affine" and stages[1].options["max_evaluations"] == 300
    ui.methodComboBox.currentIndex = list(SPECS).index("nmi")
    bins = widget._optionWidgets["bins"]
    bins.value = 32
    assert json.loads(p.methodOptions)["nmi"] == {"bins": 32}
    assert mod.DeepRegistrationLogic.optionValues(p) == {"bins": 32}
    assert widget._optionWidgets["bins"] is bins   # the panel's own edit does not rebuild the options
    ui.methodComboBox.currentIndex = list(SPECS).index("diffeo")
    assert mod.DeepRegistrationLogic.optionValues(p) == {}
    ui.methodComboBox.currentIndex = list(SPECS).index("nmi")
    assert widget._optionWidgets["bins"].value == 32


def test_selectors_list_the_usual_nodes(scene):
    _, widget = harness.build_widget("DeepRegistration", scene)
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "from the Transforms module")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "loaded .h5")
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
    for selector in ("fixedVolumeSelector", "initialTransformSelector", "fixedMaskSelector"):
        harness.unwrap(getattr(widget.ui, selector)).refresh()
    listed = lambda name: harness.unwrap(getattr(widget.ui, name)).nodes()  # noqa: E731
    assert {linear, grid} <= set(listed("initialTransformSelector"))
    assert {labels, segmentation, volume} <= set(listed("fixedMaskSelector"))
    assert volume in listed("fixedVolumeSelector") and labels not in listed("fixedVolumeSelector")
    widget.ui.fixedMaskSelector.setCurrentNode(segmentation)
    assert widget._parameterNode.fixedMask is segmentation


def test_registration_arguments_of_every_method_and_pipeline_parse(scene, brain, tmp_path):
    """What the panel runs in the background is a valid ``deepregistration register`` call for each method and
    pipeline (one call: the pipeline's stages run in it), its options routed to their stage."""
    mod = harness.build_widget("DeepRegistration", scene)[0]
    image, labels, moving, _ = brain
    fixed_node = mrml.image_to_volume_node(image, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    mask = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    mrml.image_to_volume_node(labels, scene, "mask", mask)
    parser = build_parser()
    logic = mod.DeepRegistrationLogic()
    p = logic.getParameterNode()
    p.fixedVolume, p.movingVolume, p.fixedMask = fixed_node, moving_node, mask
    for name in (*SPECS, *PIPELINE_PRESETS):
        specs = pipeline_specs(name)
        p.method = mod.Method(name)
        p.model = next((s.default_model for s in specs if s.model_kind), "")
        folder = tmp_path / name
        folder.mkdir()
        args = parser.parse_args(logic.registrationArguments(p, str(folder)))
        assert args.method == name
        assert (args.out_inverse is not None) == specs[-1].inverse
        assert (args.out_jacobian is not None) == specs[-1].deformable
        assert (args.fixed_mask is not None) == any("fixed" in s.masks for s in specs)
        assert args.model == ([p.model] if p.model else None)
    p.methodOptions = logic.withOptionValues(p, {"nmi.bins": 48, "diffeo.tile": 64})   # p.method: the last pipeline
    args = parser.parse_args(logic.registrationArguments(p, str(tmp_path / PIPELINE_PRESETS[-1])))
    stages = plan(args.method, parse_params(args.param), args.model)
    assert [s.spec.name for s in stages] == ["nmi", "nmi-affine", "diffeo"]
    assert (stages[0].options["bins"], stages[1].options["bins"], stages[2].options["tile"]) == (
        48, SPECS["nmi-affine"].option("bins").default, 64)


def test_a_command_sequence_runs_its_stages_in_order(tmp_path):
    child = tmp_path / "stage"
    child.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import json, sys
        print(json.dumps({"event": "progress", "fraction": 0.5, "message": sys.argv[-1]}))
        print(json.dumps({"event": "done", "outputs": {"stage": sys.argv[-1]}}))
    """))
    child.chmod(0o755)
    job = CommandSequence([["first"], ["second"]], str(child)).start()
    assert job.wait(60) == 0
    events = job.events()
    while not job.finished:
        events += job.events()
    assert job.outputs == {"stage": "second"}


def test_presets_apply_and_save(scene, tmp_path):
    mod, widget = harness.build_widget("DeepRegistration", scene)
    logic, p = mod.DeepRegistrationLogic, widget._parameterNode
    presets = logic.presets([mod.PRESETS_DIR])
    logic.applyPreset(presets["T1↔T1 brain, rigid + diffeo"], p)
    assert p.method.value == "nmi+diffeo" and widget.ui.methodComboBox.currentText == mod.Method("nmi+diffeo").label()
    assert p.model == "diffeo_brain_t1"
    assert widget._optionWidgets["diffeo.tile"].value == SPECS["diffeo"].option("tile").default
    widget._optionWidgets["diffeo.tile"].value = 64
    path = logic.savePreset("mine", p, str(tmp_path))
    assert logic.presets([str(tmp_path)])["mine"] == {"name": "mine", "method": "nmi+diffeo", "model": p.model,
                                                      "options": {"diffeo.tile": 64}}
    assert Path(path).parent == tmp_path
    widget._optionWidgets["diffeo.tile"].value = 80
    logic.applyPreset(logic.presets([str(tmp_path)])["mine"], p)
    assert widget._optionWidgets["diffeo.tile"].value == 64   # a preset of the same method refreshes the fields
    with pytest.raises(Exception, match="unknown option"):   # a stage's option given without its stage
        logic.applyPreset({"name": "bad", "method": "nmi+diffeo", "model": "", "options": {"tile": 64}}, p)


def test_background_deepsim_registration_adds_nodes_and_leaves_inputs(scene, brain):
    mod, widget = harness.build_widget("DeepRegistration", scene)
    image, _, moving, _ = brain
    fixed_node = mrml.image_to_volume_node(image, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    before = slicer.util.arrayFromVolume(moving_node).copy()
    logic, p = widget.logic, widget._parameterNode
    p.fixedVolume, p.movingVolume, p.method, p.device = fixed_node, moving_node, mod.Method("deepsim"), "cpu"
    p.methodOptions = logic.withOptionValues(p, {"iterations": 0})   # the network alone: IO has its own tests
    p.keepTemporaryFiles = True
    job = logic.startBackgroundRegistration(p)
    try:
        assert job.wait(timeout=300) == 0, job.error_message()
        job.events()
        nodes = logic.finishBackgroundRegistration(job, p)
    finally:
        folder = logic.cleanupJob(job, keep=False)
    assert folder == "" and not os.path.exists(job.folder)
    assert p.outputTransform is nodes["transform"] and not nodes["transform"].IsLinear()
    assert nodes["transform"].GetNodeReference("fixedVolume") is fixed_node
    assert nodes["transform"].GetNodeReference("movingVolume") is moving_node
    assert moving_node.GetParentTransformNode() is nodes["transform"]
    assert p.outputVolume is nodes["volume"]
    assert slicer.util.arrayFromVolume(nodes["jacobian"]).shape == image.grid.shape
    assert np.array_equal(slicer.util.arrayFromVolume(moving_node), before)
    assert nodes["stages"] == [nodes["transform"]] and logic.confidenceOf(nodes["transform"]) == []   # deformable
    # a second run starts from the moving volume's transform (the first result) and reuses the output nodes
    args = logic.registrationArguments(p, str(Path(job.folder).parent), moving_node.GetParentTransformNode())
    assert "--initial-transform" in args


def _apply_in_panel(scene, brain, method: str, options: dict, fixed_mask: bool = False):
    """The DeepRegistration panel with the brain pair, ``method`` and ``options``, after Apply and its background
    run: (module, widget, the fixed image)."""
    import time
    from PySide6.QtWidgets import QApplication
    mod, widget = harness.build_widget("DeepRegistration", scene)
    harness.PyTorchUtilsRecorder.installed = True
    image, _, moving, _ = brain
    p = widget._parameterNode
    p.fixedVolume = mrml.image_to_volume_node(image, scene, "fixed")
    p.movingVolume = mrml.image_to_volume_node(moving, scene, "moving")
    if fixed_mask:
        p.fixedMask = mrml.image_to_volume_node(
            image.with_array((image.array > image.array.mean()).astype(np.uint8)), scene, "fixed mask")
    p.method, p.device = mod.Method(method), "cpu"
    p.methodOptions = widget.logic.withOptionValues(p, options)
    widget.ui.applyButton.click()
    assert widget._job is not None, widget.ui.statusLabel.text
    deadline = time.time() + 300
    while widget._job is not None and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    assert widget._job is None and p.outputTransform is not None, widget.ui.statusLabel.text
    return mod, widget, image


def test_apply_shows_the_results_warnings_in_the_log_and_the_status(scene, brain):
    """The warnings of the result (here: masks given to the network alone, which cannot use them) reach the
    panel: each in the log, and their count in the status line."""
    _, widget, _ = _apply_in_panel(scene, brain, "diffeo", {"iterations": 0}, fixed_mask=True)
    assert "Warning: the masks were not used" in widget.ui.logTextEdit.toPlainText()
    assert "warning(s): see the log" in widget.ui.statusLabel.text


def test_pipeline_from_apply_adds_each_stage_transform_and_shows_the_confidence(scene, brain):
    """``nmi+nmi-affine`` from Apply (one background ``register`` call): the rigid stage's transform joins the
    output transform (the affine composite) in the scene, referenced by it; the rigid stage's confidence is put on
    the output transform, where the panel's label reads it (a warning style when flagged)."""
    mod, widget, image = _apply_in_panel(scene, brain, "nmi+nmi-affine", {"nmi-affine.max_evaluations": 300})
    ui, p, logic = widget.ui, widget._parameterNode, widget.logic
    output = p.outputTransform

    rigid = output.GetNthNodeReference(mrml.STAGE_REFERENCE, 0)
    assert output.GetNumberOfNodeReferences(mrml.STAGE_REFERENCE) == 1 and rigid.IsLinear() and output.IsLinear()
    assert widget._lastNodes["stages"] == [rigid, output] and rigid.GetName() in ui.statusLabel.text
    # moving = fixed ∘ shift (the brain fixture), so the registration's fixed -> moving map is shift⁻¹
    truth = RigidTransform([0.0, 0.0, 0.05], [2.0, 0.0, 0.0], image.grid.center_physical()).inverse()
    points = image.grid.index_to_physical(np.argwhere(image.array > image.array.mean())[:, ::-1].astype(float))
    for node in (rigid, output):   # both recover it (mean TRE over the fixed foreground)
        error = mrml.node_to_transform(node).transform_points(points) - truth.transform_points(points)
        assert np.sqrt((error ** 2).sum(1)).mean() < 1.5
    assert not np.allclose(mrml.node_to_transform(rigid).matrix4(), mrml.node_to_transform(output).matrix4())

    entries = logic.confidenceOf(output)
    assert [e["method"] for e in entries] == ["nmi", "nmi-affine"] and not entries[0]["flagged"]
    assert 0 < entries[0]["uncertainty_mm"] < 5 and entries[1]["uncertainty_deg"] is None     # affine: no angle
    shown = "nmi: uncertainty {:.2f} mm / {:.2f}°; nmi-affine: uncertainty {:.2f} mm".format(
        entries[0]["uncertainty_mm"], entries[0]["uncertainty_deg"], entries[1]["uncertainty_mm"])
    flagged = entries[1]["flagged"]
    assert ui.confidenceLabel.text == ("Likely failure: " + shown if flagged else shown)
    assert (ui.confidenceLabel.styleSheet != "") == flagged
    logic.storeConfidence(output, [dict(entries[0], flagged=True, reasons=["a flat response"])])
    widget.updateGui()
    assert ui.confidenceLabel.text.startswith("Likely failure: uncertainty")
    assert "color" in ui.confidenceLabel.styleSheet
    assert ui.confidenceLabel.toolTip == "nmi: a flat response"
    logic.storeConfidence(output, [])   # a result without a confidence (deformable) into the same transform
    widget.updateGui()
    assert logic.confidenceOf(output) == [] and ui.confidenceLabel.text == ""

    # the next run into the same output transform reuses its stage nodes
    count = scene.GetNumberOfNodesByClass("vtkMRMLTransformNode")
    report = {"stages": [{"method": "nmi", "matrix_lps": np.eye(4).tolist()}, {"method": "nmi-affine"}]}
    assert mrml.stage_transform_nodes(scene, "nmi+nmi-affine", report, output, "again") == [rigid, output]
    assert scene.GetNumberOfNodesByClass("vtkMRMLTransformNode") == count


def test_preview_samples_patches_in_a_worker_thread(scene, brain):
    """Preview ensures the dependencies first, samples in a worker thread and shows the montage when ready."""
    import time
    from PySide6.QtWidgets import QApplication
    _, widget = harness.build_widget("DeepMetricTraining", scene)
    harness.PyTorchUtilsRecorder.installed = True
    image, _, moving, _ = brain
    widget.ui.fixedVolumeSelector.setCurrentNode(mrml.image_to_volume_node(image, scene, "fixed"))
    widget.ui.movingVolumeSelector.setCurrentNode(mrml.image_to_volume_node(moving, scene, "moving"))
    widget.ui.previewButton.click()
    assert harness.PyTorchUtilsRecorder.calls == ["torchInstalled"]
    deadline = time.time() + 120
    while scene.GetFirstNodeByName(mrml.PATCH_PREVIEW_NAME) is None and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    node = scene.GetFirstNodeByName(mrml.PATCH_PREVIEW_NAME)
    assert node is not None and slicer.util.arrayFromVolume(node).shape[0] == 1
    assert widget.ui.previewButton.enabled


def test_training_curves_keep_one_table_and_one_chart(scene):
    mod, widget = harness.build_widget("DeepMetricTraining", scene)
    logic, p = widget.logic, widget._parameterNode
    for update in range(40):
        logic.applyEvents([{"event": "step", "step": 10 * update + s, "loss": 1.0 / (1 + update), "fraction": 0.1}
                           for s in range(10)], p)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 3
    assert p.curvesTable.GetNumberOfRows() == 400


def test_start_then_stop_through_the_panel_keeps_a_checkpoint(scene, brain, tmp_path):
    """Start a DIRNet training from the panel, let the timer bring steps into the curves, Stop: the trainer
    writes its checkpoint (SIGTERM), Resume becomes possible, and the scene holds one curves chart."""
    import time
    from PySide6.QtWidgets import QApplication
    _, widget = harness.build_widget("DeepMetricTraining", scene)
    harness.PyTorchUtilsRecorder.installed = True
    ui, p = widget.ui, widget._parameterNode
    image, _, moving, _ = brain
    ui.fixedVolumeSelector.setCurrentNode(mrml.image_to_volume_node(image, scene, "fixed"))
    ui.movingVolumeSelector.setCurrentNode(mrml.image_to_volume_node(moving, scene, "moving"))
    p.network, p.dimension, p.epochs, p.device = "dirnet", 2, 50, "cpu"
    p.outputModel = str(tmp_path / "dirnet.pt")
    ui.startButton.click()
    assert widget._job is not None and ui.stopButton.enabled and not ui.startButton.enabled
    deadline = time.time() + 180
    while (p.curvesTable is None or p.curvesTable.GetNumberOfRows() < 1) and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    assert p.curvesTable is not None and p.curvesTable.GetNumberOfRows() >= 1, widget._job.error_message()
    folder = widget._job.folder
    ui.stopButton.click()
    assert widget._job is None and ui.startButton.enabled and ui.resumeButton.enabled
    assert not os.path.exists(folder)   # the scene pair written for the job is removed
    assert any((tmp_path / "dirnet_checkpoints").iterdir())
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert not (tmp_path / "dirnet.pt").exists()


def test_resume_only_with_a_checkpoint_and_start_without_an_output_path(scene, tmp_path):
    _, widget = harness.build_widget("DeepMetricTraining", scene)
    ui, p = widget.ui, widget._parameterNode
    p.pairsCsv = str(tmp_path / "pairs.csv")
    assert ui.startButton.enabled and not ui.resumeButton.enabled
    p.outputModel = str(tmp_path / "metric.pt")
    assert not ui.resumeButton.enabled
    (tmp_path / "metric_checkpoints").mkdir()
    (tmp_path / "metric_checkpoints" / "checkpoint.pt").write_bytes(b"")
    p.outputModel = str(tmp_path / "metric.pt")
    widget.updateGui()
    assert ui.resumeButton.enabled


def test_training_panel_trains_deepsim_from_scene_nodes(scene, brain, tmp_path):
    """Feature extractor from a labelled scene pair, then a DeepSim registration U-Net on its features."""
    mod, widget = harness.build_widget("DeepMetricTraining", scene)
    image, labels, moving, moving_labels = brain
    nodes = {"fixedVolume": mrml.image_to_volume_node(image, scene, "fixed"),
             "movingVolume": mrml.image_to_volume_node(moving, scene, "moving")}
    for key, array in (("fixedLabels", labels), ("movingLabels", moving_labels)):
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", key)
        mrml.image_to_volume_node(array, scene, key, node)
        nodes[key] = node
    logic, p = widget.logic, widget._parameterNode

    def configure(**values):
        for key, value in {**nodes, **values}.items():
            setattr(p, key, value)
        return p

    configure(network="deepsim-features", outputModel=str(tmp_path / "f.pt"), fixedLabels=None)
    with pytest.raises(ValueError, match="label maps"):
        logic.trainingArguments(p, False, str(tmp_path))

    configure(network="deepsim-features", dimension=2, epochs=1, device="cpu",
              outputModel=str(tmp_path / "features.pt"))
    events = logic.train(p)
    assert events[-1]["event"] == "done" and read_metadata(tmp_path / "features.pt")["kind"] == "deepsim-features"
    assert p.curvesTable is not None and p.curvesTable.GetNumberOfRows() >= 20

    configure(network="deepsim", similarity="deepsim", featuresModel=str(tmp_path / "features.pt"),
              regularization="0.05,0.2", dimension=2, epochs=1, device="cpu", outputModel=str(tmp_path / "deepsim.pt"))
    args = logic.trainingArguments(p, False, str(tmp_path))
    assert args[args.index("--lam") + 1] == "0.05,0.2" and args[args.index("--dim") + 1] == "2"
    logic.train(p)
    meta = read_metadata(tmp_path / "deepsim.pt")
    assert meta["similarity"] == "deepsim" and [c["lambda"] for c in meta["lambda_search"]] == [0.05, 0.2]
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1

    configure(network="diffeo", similarity="ncc_sup", outputModel=str(tmp_path / "d.pt"))
    with pytest.raises(ValueError, match="nmse, mse, lncc, deepsim"):
        logic.trainingArguments(p, False, str(tmp_path))
