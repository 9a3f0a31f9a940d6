"""The one ``to_dict`` of settings dataclasses: what checkpoints compare and model files record."""
import json
from dataclasses import dataclass, field

from DeepRegistrationLib.core.settings import Settings
from DeepRegistrationLib.networks.dirnet_regressor import DIRNetConfig
from DeepRegistrationLib.training.dirnet_trainer import DIRNetTraining
from DeepRegistrationLib.training.metric_trainer import MetricTrainingConfig


@dataclass(frozen=True)
class Inner(Settings):
    sizes: tuple = (1, 2)


@dataclass
class Outer(Settings):
    inner: Inner = field(default_factory=Inner)
    pairs: tuple = ((1.0, 2.0), (3.0, 4.0))
    name: str = "x"


def test_nested_settings_become_dicts_and_tuples_lists_at_any_depth():
    assert Outer().to_dict() == {"inner": {"sizes": [1, 2]}, "pairs": [[1.0, 2.0], [3.0, 4.0]], "name": "x"}
    assert json.loads(json.dumps(Outer().to_dict())) == Outer().to_dict()      # plain JSON, as model files hold it


def test_trainer_settings_keep_the_recorded_form():
    d = DIRNetTraining(config=DIRNetConfig(ndim=3), size_xyz=(64, 80, 64), spacing_mm=(2.0, 2.0, 2.0)).to_dict()
    assert d["config"] == {"ndim": 3, "channels": 16, "conv_layers": 4, "downsamplings": 4, "pooling": "avg",
                           "spline_order": 3, "overlapping": False}
    assert d["size_xyz"] == [64, 80, 64] and d["spacing_mm"] == [2.0, 2.0, 2.0]
    m = MetricTrainingConfig().to_dict()
    assert m["stages"] == [[4.0, 100.0], [2.0, 25.0], [2.0, 15.0], [1.0, 8.0]] and m["channels"] == [16, 32, 32]
