"""The Jacobian overlay as Slicer's slice-view pipeline renders it (slicer-core, offscreen OpenGL).

Each pixel of the rendered view is traced back through the slice node's XY-to-RAS matrix to the voxel it
shows; the folding colour must appear exactly where det J < 0, so no small positive value is painted as
folding (the old table's entry 0 covered 0 <= det J < 0.0078).
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="Slicer's core (the slicer-core wheel, CPython 3.11 on Linux) is not installed")
vtk = pytest.importorskip("vtk")

from DeepRegistrationLib import mrml  # noqa: E402
from DeepRegistrationLib.core.image import Grid, Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _renderer_module():
    spec = importlib.util.spec_from_file_location("render_slice_views", ROOT / "scripts" / "render_slice_views.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_slice_views", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def views():
    probe = subprocess.run([sys.executable, "-c", "import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); "
                            "w.Render(); print('OPENGL', w.SupportsOpenGL())"], capture_output=True, text=True, timeout=120)
    if "OPENGL 1" not in probe.stdout:   # in a child process: a missing OpenGL can abort rather than raise
        pytest.skip("no offscreen OpenGL context for VTK (Debian: apt-get install libegl1 libegl-mesa0 "
                    f"libgl1-mesa-dri): {probe.stderr.strip()[-300:]}")
    render = _renderer_module()
    return render


def test_folding_colour_exactly_where_det_j_is_negative(views):
    scene, app, colors = views.mrml_application()
    grid = Grid((40, 40, 5), (2.0, 2.0, 2.0), (-40.0, -40.0, -5.0))
    det = np.ones(grid.shape, np.float32)
    k, j, i = np.indices(grid.shape)
    det[:, 5:15, 5:15] = -0.5                       # folding
    det[:, 5:15, 25:35] = 0.004                     # tiny but positive: compression, not folding
    det[:, 25:35, 5:15] = np.where(i[:, 25:35, 5:15] % 2, -1e-3, 1e-3)   # alternating signs next to 0
    det[:, 25:35, 25:35] = 1.9
    jacobian = mrml.jacobian_to_volume_node(Image(det, grid), scene, "det J")
    view = views.OffscreenSliceView(scene, app, "Red", (320, 320))
    pixels = view.show(jacobian, None, offset_mm=-1.0).render()

    green = np.all(pixels == np.round(np.array(mrml.FOLDING_RGB) * 255).astype(np.uint8), axis=-1)
    xy_to_ras = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ras_to_ijk = np.linalg.inv(mrml.ijk_to_ras_matrix(grid))
    rows, columns = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    xy = np.stack([columns.ravel(), (pixels.shape[0] - 1 - rows).ravel(), np.zeros(rows.size), np.ones(rows.size)])
    ijk = (ras_to_ijk @ xy_to_ras @ xy)[:3].T
    nearest = np.round(ijk).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.array(grid.size)), axis=1)
    # pixels whose voxel is unambiguous (not within a quarter voxel of a voxel border)
    clear = inside & np.all(np.abs(ijk - nearest) < 0.25, axis=1)
    expected = np.zeros(rows.size, bool)
    ii, jj, kk = nearest[clear].T
    expected[clear] = det[kk, jj, ii] < 0
    shown = green.ravel()
    assert clear.sum() > 5000
    assert expected[clear].sum() > 1000 and (~expected[clear]).sum() > 1000
    assert np.array_equal(shown[clear], expected[clear])


def test_jacobian_colour_node_is_reused(views):
    scene, _, _ = views.mrml_application()
    grid = Grid((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for n in range(3):
        mrml.jacobian_to_volume_node(Image(np.ones(grid.shape, np.float32), grid), scene, f"det J {n}")
    tables = [scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode")
              for n in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))]
    assert [t.GetName() for t in tables].count(mrml.JACOBIAN_COLORS) == 1
