"""The two Slicer modules' logic classes run headless on the real Slicer core (``slicer-core`` wheel).

The module files import Slicer's GUI framework (``qt``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.i18n``), which the wheel lacks. Minimal stand-ins for those
framework names are installed for the import only: the logic methods under test never call them, and
everything they do touch (scene, nodes, volumes, transforms, tables, the background CLI process) is real.
The parameter node is a namespace with the module's declared parameters and defaults.
"""
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="Slicer's core (the slicer-core wheel, CPython 3.11 on Linux) is not installed")

from DeepRegistrationLib import mrml  # noqa: E402
from DeepRegistrationLib.cli import build_parser  # noqa: E402
from DeepRegistrationLib.core.transforms import RigidTransform  # noqa: E402
from DeepRegistrationLib.core.warp import warp  # noqa: E402
from DeepRegistrationLib.models.model_file import read_metadata  # noqa: E402
from DeepRegistrationLib.data.corpus_pairs import TemplateSubjectSettings, icbm_template  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _framework_stand_ins() -> dict:
    qt = types.ModuleType("qt")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (_Base,), {}))
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda values: ("Choice", tuple(values))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return {"qt": qt, "slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": wrapper,
            "slicer.i18n": i18n}


@pytest.fixture
def modules(monkeypatch):
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    for name, module in _framework_stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    for folder in ("DeepRegistration", "DeepMetricTraining"):
        monkeypatch.syspath_prepend(str(ROOT / folder))
        monkeypatch.delitem(sys.modules, folder, raising=False)
    return (importlib.import_module("DeepRegistration"), importlib.import_module("DeepMetricTraining"), scene)


def parameters(cls, **values) -> types.SimpleNamespace:
    """The declared parameters of a module with their defaults (None for nodes), overridden by ``values``."""
    fields = {name: getattr(cls, name, None) for name in cls.__annotations__}
    unknown = set(values) - set(fields)
    assert not unknown, f"not parameters of {cls.__name__}: {unknown}"
    fields.update(values)
    return types.SimpleNamespace(**fields)


@pytest.fixture(scope="module")
def brain():
    """ICBM 2009a T1 at 4 mm and its tissue labels, and both rigidly moved."""
    image, labels = icbm_template(TemplateSubjectSettings(size_xyz=(40, 48, 40), spacing_mm=4.0))
    shift = RigidTransform([0.0, 0.0, 0.05], [2.0, 0.0, 0.0], image.grid.center_physical())
    return image, labels, warp(image, image.grid, shift), warp(labels, labels.grid, shift, mode="nearest")


def test_registration_command_line_of_every_method_parses(modules, brain, tmp_path):
    """What the panel runs in the background is a valid ``deepregistration register`` call for each method."""
    reg, _, scene = modules
    image, _, moving, _ = brain
    fixed_node = mrml.image_to_volume_node(image, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    parser = build_parser()
    logic = reg.DeepRegistrationLogic()
    for method in reg.METHOD_NAMES:
        p = parameters(reg.DeepRegistrationParameterNode, fixedVolume=fixed_node, movingVolume=moving_node,
                       method=method)
        args = parser.parse_args(logic.registrationArguments(p, str(tmp_path)))
        assert args.method == method
        assert (args.out_inverse is not None) == (method in reg.INVERTIBLE_METHODS)
        assert (args.out_jacobian is not None) == (method in reg.DEFORMABLE_METHODS)
        assert method == "nmi" or logic.availableModels(method), f"no bundled model listed for {method}"


def test_background_deepsim_registration_adds_nodes_and_leaves_inputs(modules, brain):
    reg, _, scene = modules
    image, _, moving, _ = brain
    fixed_node = mrml.image_to_volume_node(image, scene, "fixed")
    moving_node = mrml.image_to_volume_node(moving, scene, "moving")
    before = slicer.util.arrayFromVolume(moving_node).copy()
    logic = reg.DeepRegistrationLogic()
    p = parameters(reg.DeepRegistrationParameterNode, fixedVolume=fixed_node, movingVolume=moving_node,
                   method="deepsim", model="deepsim_brain_t1_3d", device="cpu")
    job = logic.startBackgroundRegistration(p)
    try:
        assert job.wait(timeout=300) == 0, job.error_message()
        events = job.events()
        job.outputs = next(e["outputs"] for e in events if e.get("event") == "done")
        nodes = logic.finishBackgroundRegistration(job, p)
    finally:
        logic.cleanupJob(job)
    assert p.outputTransform is nodes["transform"] and not nodes["transform"].IsLinear()
    assert moving_node.GetParentTransformNode() is nodes["transform"]
    assert slicer.util.arrayFromVolume(nodes["jacobian"]).shape == image.grid.shape
    assert "inverse" not in nodes
    assert np.array_equal(slicer.util.arrayFromVolume(moving_node), before)


def test_training_panel_trains_deepsim_from_scene_nodes(modules, brain, tmp_path):
    """Feature extractor from a labelled scene pair, then a DeepSim registration U-Net on its features."""
    _, training, scene = modules
    image, labels, moving, moving_labels = brain
    nodes = {"fixedVolume": mrml.image_to_volume_node(image, scene, "fixed"),
             "movingVolume": mrml.image_to_volume_node(moving, scene, "moving")}
    for key, array in (("fixedLabels", labels), ("movingLabels", moving_labels)):
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", key)
        mrml.image_to_volume_node(array, scene, key, node)
        nodes[key] = node
    logic = training.DeepMetricTrainingLogic()
    no_labels = parameters(training.DeepMetricTrainingParameterNode, network="deepsim-features",
                           outputModel=str(tmp_path / "f.pt"), fixedVolume=nodes["fixedVolume"],
                           movingVolume=nodes["movingVolume"])
    with pytest.raises(ValueError, match="label maps"):
        logic.trainingArguments(no_labels, False, str(tmp_path))

    features = parameters(training.DeepMetricTrainingParameterNode, network="deepsim-features", dimension=2,
                          epochs=1, device="cpu", outputModel=str(tmp_path / "features.pt"), **nodes)
    events = logic.train(features)
    assert events[-1]["event"] == "done" and read_metadata(tmp_path / "features.pt")["kind"] == "deepsim-features"
    assert features.curvesTable is not None and features.curvesTable.GetNumberOfRows() >= 20

    registration = parameters(training.DeepMetricTrainingParameterNode, network="deepsim", similarity="deepsim",
                              featuresModel=str(tmp_path / "features.pt"), regularization="0.05,0.2", dimension=2,
                              epochs=1, device="cpu", outputModel=str(tmp_path / "deepsim.pt"), **nodes)
    args = logic.trainingArguments(registration, False, str(tmp_path))
    assert args[args.index("--lam") + 1] == "0.05,0.2" and args[args.index("--dim") + 1] == "2"
    logic.train(registration)
    meta = read_metadata(tmp_path / "deepsim.pt")
    assert meta["similarity"] == "deepsim" and [c["lambda"] for c in meta["lambda_search"]] == [0.05, 0.2]

    wrong = parameters(training.DeepMetricTrainingParameterNode, network="diffeo", similarity="ncc_sup",
                       outputModel=str(tmp_path / "d.pt"), **nodes)
    with pytest.raises(ValueError, match="nmse, mse, lncc, deepsim"):
        logic.trainingArguments(wrong, False, str(tmp_path))
