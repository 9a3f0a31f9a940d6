import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.image import Grid, Image


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def rotation(ax, ay, az):
    from DeepRegistrationLib.core.transforms import RigidTransform
    return RigidTransform([ax, ay, az]).rotation_matrix()


@pytest.fixture
def oblique_grid():
    """Anisotropic, oblique, off-origin grid."""
    return Grid((23, 19, 15), (1.3, 0.9, 2.1), (-12.5, 7.25, 30.0), rotation(0.2, -0.15, 0.35))


@pytest.fixture
def smooth_volume(oblique_grid):
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter
    arr = gaussian_filter(rng.random(oblique_grid.shape), 1.5).astype(np.float32) * 100
    return Image(arr, oblique_grid)
