"""The metric CNN (Sedghi et al. §2.2) and metric-set model files."""
import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.models.model_file import save_model
from DeepRegistrationLib.networks.metric_cnn import MetricCNN, default_architecture
from DeepRegistrationLib.rigid.cnn_metric import load_metric_set, save_metric_set


def stage_info(arch, k=1):
    return {"stage": k, "level": 4.0, "dither_variance_mm2": 100.0, "spacing_mm": 4.0, "patch_size": 17,
            "architecture": arch}


def meta():
    return {"intensity_normalization": "test", "training": {"description": "unit test"}}


def test_shapes_layers_and_score_sign():
    torch.manual_seed(0)
    arch = default_architecture((4, 8, 8))
    net = MetricCNN(arch).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.kernel_size[0] for c in convs] == [5, 3, 3] and all(c.stride == (2, 2, 2) for c in convs)
    assert arch["conv_layers"] == 3
    x = torch.randn(5, 2, 17, 17, 17)
    logits = net(x)
    assert logits.shape == (5, 2)
    assert torch.allclose(net.score(x), logits[:, 1] - logits[:, 0])
    with torch.no_grad():  # make "registered" win: the score is positive exactly when logit 1 > logit 0
        net.dense.bias.copy_(torch.tensor([-5.0, 5.0]))
        net.dense.weight.zero_()
    assert (net.score(x) > 0).all() and torch.allclose(net.score(x), torch.full((5,), 10.0))


def test_metric_set_round_trip(tmp_path):
    torch.manual_seed(1)
    arch = default_architecture((4, 8, 8))
    nets = [MetricCNN(arch).eval(), MetricCNN(arch).eval()]
    path = save_metric_set(tmp_path / "set.pt", nets, [stage_info(arch, 1), stage_info(arch, 2)], meta())
    stages = load_metric_set(path)
    x = torch.randn(3, 2, 17, 17, 17)
    assert len(stages) == 2
    for net, st in zip(nets, stages):
        assert torch.equal(net.score(x), st.network.score(x))
        assert st.spacing_mm == 4.0 and st.patch_size == 17


def test_wrong_files_are_refused(tmp_path):
    arch = default_architecture((4, 8, 8))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(InputError, match="not a DeepRegistration model"):
        load_metric_set(junk)
    other = save_model(tmp_path / "other.pt", MetricCNN(arch).state_dict(),
                       {"kind": "dirnet", "architecture": arch, "patch_size": 17, "spacing_mm": 4.0, **meta()})
    with pytest.raises(InputError, match="'dirnet' model"):
        load_metric_set(other)
    wrong = save_metric_set(tmp_path / "wrong.pt", [MetricCNN(arch)], [stage_info(default_architecture((4, 8, 16)))],
                            meta())
    with pytest.raises(InputError, match="do not fit the architecture"):
        load_metric_set(wrong)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "deepregistration-model/1", "metadata": {}, "state_dict": np.random.default_rng()}, pickled)
    with pytest.raises(InputError, match="pickled code are refused") as refused:
        load_metric_set(pickled)
    assert "weights_only=False" not in str(refused.value)
    with pytest.raises(InputError, match="neither a file nor a bundled model"):
        load_metric_set(tmp_path / "missing.pt")
