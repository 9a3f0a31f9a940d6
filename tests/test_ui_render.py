"""The panels render offscreen (PySide6) with visible stand-ins for the Slicer/CTK widgets."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed")
ROOT = Path(__file__).resolve().parent.parent


def test_render_panels(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_ui.py"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import matplotlib.image as mpimg
    for name in ("DeepRegistration", "DeepMetricTraining"):
        png = mpimg.imread(tmp_path / f"{name}.png")
        assert png.shape[0] > 500 and png.shape[1] >= 400
        gray = png[..., :3].mean(-1)
        # many rows carry widgets (text, frames), so the picture is not an empty window
        assert (gray.std(axis=1) > 0.02).mean() > 0.5
