"""DeepSim's metric (eq. 2), its U-Nets and the losses of eq. 1: values, gradients, frozen features."""
import pytest
import torch

from DeepRegistrationLib.data import sources
from DeepRegistrationLib.core.network_input import normalize_intensity
from DeepRegistrationLib.core.spatial_transformer import warp_voxels
from DeepRegistrationLib.metrics.deepsim_similarity import DeepSim, cosine_similarity_map, deepsim_from_features
from DeepRegistrationLib.networks.deepsim_unet import (FeatureExtractorUNet, RegistrationUNet, feature_config,
                                                       registration_config)
from DeepRegistrationLib.rigid.pyramid import downsample
from DeepRegistrationLib.metrics.similarity import NCC_WINDOW, box_mean, diffusion, local_ncc
from DeepRegistrationLib.training.deepsim_losses import RegistrationLoss, dice_scores, soft_dice_loss, one_hot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def brain_slices():
    """Axial slices of the SPM avg152 T1 at 4 mm (real anatomy), normalized, cropped to 16 x 20."""
    t1 = downsample(sources.spm_avg152("T1"), 2)
    a = normalize_intensity(t1.array)
    mid = a.shape[0] // 2
    return torch.as_tensor(a[mid - 2:mid + 2, 3:23, 2:18].copy())[:, None]


@pytest.fixture(scope="module")
def extractor_2d():
    torch.manual_seed(0)
    return FeatureExtractorUNet(feature_config(2, 4, (4, 8)))


def test_cosine_similarity_map_is_the_normalized_dot_product():
    a = torch.tensor([[[[1.0]], [[0.0]]]])          # (B=1, C=2, 1, 1): feature vector (1, 0)
    b = torch.tensor([[[[1.0]], [[1.0]]]])          # (1, 1)
    assert float(cosine_similarity_map(a, b)) == pytest.approx(2 ** -0.5)
    assert float(cosine_similarity_map(a, -a)) == pytest.approx(-1.0)
    assert float(cosine_similarity_map(a, 3 * a)) == pytest.approx(1.0)


def test_deepsim_is_one_for_identical_inputs_and_lower_for_shifted_ones(brain_slices, extractor_2d):
    metric = DeepSim(extractor_2d)
    same = metric.per_pair(brain_slices, brain_slices)
    assert torch.allclose(same, torch.ones_like(same), atol=1e-5)
    previous = 1.0
    for shift in (1, 2, 4):
        shifted = torch.roll(brain_slices, shifts=shift, dims=-1)
        value = float(metric.similarity(shifted, brain_slices))
        assert value < previous - 1e-3
        previous = value
    assert float(metric.loss(brain_slices, brain_slices)) == pytest.approx(0.0, abs=1e-5)


def test_eq2_is_the_mean_over_layers_of_the_mean_over_voxels():
    fa = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    fb = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    expected = torch.stack([cosine_similarity_map(a, b).flatten(1).mean(1) for a, b in zip(fa, fb)]).mean(0)
    assert torch.allclose(deepsim_from_features(fa, fb), expected)
    half = torch.zeros(2, 1, 4, 4)
    half[..., :2] = 1.0                              # left half only: same as computing on the left half
    fb_left = [b.clone() for b in fb]
    fb_left[0][..., 2:] = fa[0][..., 2:]             # differences outside the mask do not count at layer 1
    masked = deepsim_from_features(fa, fb, half)
    assert torch.allclose(masked, deepsim_from_features(fa, fb_left, half))


def test_gradients_reach_the_registration_network_but_never_the_features(brain_slices, extractor_2d):
    metric = DeepSim(extractor_2d)
    before = {k: v.clone() for k, v in extractor_2d.state_dict().items()}
    torch.manual_seed(1)
    reg = RegistrationUNet(registration_config(2, (4, 8)))
    optimizer = torch.optim.Adam(reg.parameters(), lr=1e-2)
    loss_fn = RegistrationLoss("deepsim", 1.0, metric)
    moving = torch.roll(brain_slices, 1, dims=-1)
    for _ in range(3):
        loss, parts = loss_fn(reg.displacement(moving, brain_slices), moving, brain_slices)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in reg.parameters())
    assert all(not p.requires_grad and p.grad is None for p in extractor_2d.parameters())
    assert all(torch.equal(before[k], v) for k, v in extractor_2d.state_dict().items())
    image = brain_slices.clone().requires_grad_(True)
    metric.loss(torch.roll(image, 1, dims=-1), brain_slices).backward()
    assert float(image.grad.abs().sum()) > 0


def test_deepsim_is_a_dissimilarity_for_the_diffeomorphic_trainer():
    from DeepRegistrationLib.training.diffeo_trainer import DiffeoTraining, diffeo_loss

    torch.manual_seed(0)
    metric = DeepSim(FeatureExtractorUNet(feature_config(3, 4, (4, 8))))
    patch = torch.rand(1, 1, 16, 16, 16)
    zero = torch.zeros(1, 3, 16, 16, 16)
    loss, parts = diffeo_loss(zero, patch, patch, DiffeoTraining(spacing_mm=4.0), metric, 1e-4)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    loss, parts = diffeo_loss(zero, patch, torch.rand_like(patch), DiffeoTraining(spacing_mm=4.0), metric, 1e-4)
    assert parts["sim_forward"] > 0.01


def test_unets_2d_and_3d_shapes_identity_start_and_divisibility():
    torch.manual_seed(0)
    for ndim, shape in ((2, (24, 16)), (3, (16, 8, 8))):
        reg = RegistrationUNet(registration_config(ndim, (4, 8, 8, 16)))
        u = reg.displacement(torch.rand(2, 1, *shape), torch.rand(2, 1, *shape))
        assert u.shape == (2, ndim, *shape) and float(u.detach().abs().max()) < 1e-2
        seg = FeatureExtractorUNet(feature_config(ndim, 4, (4, 8, 16)))
        assert seg(torch.rand(1, 1, *shape)).shape == (1, 4, *shape)
        feats = seg.features(torch.rand(1, 1, *shape))
        assert [f.shape[1] for f in feats] == [4, 8, 16]
        assert [f.shape[2] for f in feats] == [shape[0], shape[0] // 2, shape[0] // 4]
    with pytest.raises(ValueError, match="divisible by 8"):
        reg(torch.rand(1, 2, 12, 12, 12))
    with pytest.raises(ValueError, match="takes 2 channels"):
        RegistrationUNet(feature_config(2, 4))


def test_losses_of_eq1():
    u = torch.zeros(1, 2, 8, 8)
    assert float(diffusion(u + 3.0)) == 0.0
    ramp = torch.zeros(1, 2, 8, 8)
    ramp[:, 0] = torch.arange(8.0)                  # ∂u_x/∂x = 1 everywhere: mean Σ (∂u_c/∂x_d)² = 1
    assert float(diffusion(ramp)) == pytest.approx(1.0)
    img = torch.rand(1, 1, 16, 16)
    assert float(local_ncc(img, 2 * img + 1)) < 1e-2 < float(local_ncc(img, torch.rand_like(img)))
    labels = torch.randint(0, 4, (2, 8, 8))
    assert float(soft_dice_loss(one_hot(labels, 4), one_hot(labels, 4))) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(dice_scores(labels, labels, torch.zeros(2, 2, 8, 8), 4), torch.ones(2))
    shifted = dice_scores(labels, labels, torch.ones(2, 2, 8, 8), 4)
    assert float(shifted.max()) < 0.6


def test_ncc_sup_needs_labels_and_uses_them():
    torch.manual_seed(0)
    img = torch.rand(1, 1, 16, 16)
    labels = (img[:, 0] * 4).long().clamp(max=3)
    u = torch.zeros(1, 2, 16, 16)
    sup = RegistrationLoss("ncc_sup", 1.0)
    plain = RegistrationLoss("ncc", 1.0)
    a, _ = sup(u, img, img, labels, labels)
    b, _ = plain(u, img, img)
    assert float(a) == pytest.approx(float(b), abs=1e-5)        # perfect label overlap adds nothing
    c, _ = sup(u, img, img, labels, torch.roll(labels, 3, dims=-1))
    assert float(c) > float(b) + 0.1
    with pytest.raises(ValueError, match="feature extractor"):
        RegistrationLoss("deepsim", 1.0)
    warped = warp_voxels(img, torch.zeros(1, 2, 16, 16))
    assert torch.allclose(warped, img, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 20, 24, 22), (3, 1, 30, 26)])
def test_separable_box_mean_equals_the_full_window_convolution(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    conv = torch.nn.functional.conv3d if len(shape) == 5 else torch.nn.functional.conv2d
    kernel = torch.ones(1, 1, *[NCC_WINDOW] * (len(shape) - 2))
    full = conv(x, kernel, padding=NCC_WINDOW // 2) / conv(torch.ones_like(x[:1]), kernel, padding=NCC_WINDOW // 2)
    assert torch.allclose(box_mean(x), full, atol=1e-5)
