"""The method specifications: one registry, options parsed once, masks refused where a method cannot use them."""
import subprocess
import sys

import numpy as np
import pytest

from DeepRegistrationLib.api import register
from DeepRegistrationLib.cli import build_parser
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.methods import SPECS, method_spec


@pytest.fixture(scope="module")
def pair():
    """The SPM avg152 T1 at 8 mm, and a copy shifted by one voxel."""
    from DeepRegistrationLib.data import sources
    from DeepRegistrationLib.rigid.pyramid import downsample
    t1 = downsample(sources.spm_avg152("T1"), 4)
    return t1, t1.with_array(np.roll(t1.array, 1, axis=2))


def test_the_registry_and_the_specs_import_without_torch_scipy_or_simpleitk():
    code = ("import sys\n"
            "for name in ('torch', 'scipy', 'SimpleITK', 'numpy'):\n"
            "    sys.modules[name] = None\n"
            "from DeepRegistrationLib.methods import SPECS\n"
            "print(','.join(SPECS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ",".join(SPECS)


def test_every_spec_is_consistent():
    assert list(SPECS) == ["nmi", "nmi-affine", "learned-metric", "deepsim-rigid", "diffeo", "dirnet", "deepsim"]
    for name, spec in SPECS.items():
        assert spec.name == name and spec.module.endswith("_method")
        assert (spec.model_kind is None) == (spec.default_model is None)
        defaults = spec.parse_options({})
        assert defaults == {o.name: o.default for o in spec.options}
        for option in spec.options:  # every default is a valid value of its own option
            if option.default is not None:
                assert spec.parse_options({option.name: option.default})[option.name] == option.default


def test_options_are_typed_checked_and_unknown_keys_refused():
    spec = SPECS["nmi"]
    parsed = spec.parse_options({"bins": "32", "levels": "2,1", "max-points": "5000"})
    assert parsed["bins"] == 32 and parsed["levels"] == (2.0, 1.0) and parsed["max_points"] == 5000
    with pytest.raises(InputError, match="unknown option.*bogus.*known: bins, levels, max_points, seed"):
        spec.parse_options({"bogus": 1})
    with pytest.raises(InputError, match=r"bins must lie in \[8, 256\], got 4"):
        spec.parse_options({"bins": 4})
    with pytest.raises(InputError, match="bad value for option bins"):
        spec.parse_options({"bins": "many"})
    with pytest.raises(InputError, match="must be an integer"):
        spec.parse_options({"bins": 32.5})
    with pytest.raises(InputError, match="precision must be one of auto, float32, bfloat16"):
        SPECS["diffeo"].parse_options({"precision": "float16"})
    with pytest.raises(InputError, match="unknown option.*tile.*known: iterations, io_levels"):
        SPECS["dirnet"].parse_options({"tile": 48})
    with pytest.raises(InputError, match="takes no options"):
        SPECS["nmi"].__class__(name="x", label="x", transform="rigid", module="x").parse_options({"tile": 48})


def test_models_are_checked_against_the_spec():
    assert SPECS["learned-metric"].parse_models("sedghi-t1-gm") == ["sedghi-t1-gm"]
    with pytest.raises(InputError, match="takes no --model"):
        SPECS["nmi"].parse_models(["x.pt"])
    with pytest.raises(InputError, match="takes one --model, got 2"):
        SPECS["diffeo"].parse_models(["a", "b"])


def test_old_names_and_unknown_methods_are_refused_clearly():
    with pytest.raises(InputError, match="'mi' is now called 'nmi'"):
        method_spec("mi")
    with pytest.raises(InputError, match="unknown method .snake..*nmi, nmi-affine, learned-metric"):
        method_spec("snake")


@pytest.mark.parametrize("method", [n for n, s in SPECS.items() if "moving" not in s.masks])
def test_a_mask_the_method_cannot_use_is_refused_before_anything_runs(pair, method, monkeypatch):
    import importlib
    fixed, moving = pair
    monkeypatch.setattr(importlib.import_module(SPECS[method].module), "run",
                        lambda *a: pytest.fail("the method ran"))
    mask = fixed.with_array(np.ones_like(fixed.array))
    with pytest.raises(InputError, match=f"--method {method} cannot use a moving mask"):
        register(fixed, moving, method, "cpu", moving_mask=mask)


def test_register_reports_the_parsed_options_and_the_default_model_note(pair):
    fixed, moving = pair
    report = register(fixed, moving, "nmi", "cpu", levels="2", max_points="2000").report
    assert report["options"] == {"bins": 60, "levels": [2.0], "max_points": 2000, "seed": 0, "init": "search",
                                 "confidence": True}
    assert report["method_description"] == SPECS["nmi"].label and "model_note" not in report


def test_cli_help_lists_every_method_and_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["register"]
    text = sub.format_help()
    for spec in SPECS.values():
        assert f"{spec.name}: {spec.label}" in " ".join(text.split())
        for option in spec.options:
            assert f"{option.name}=" in text
