"""DeepSim, the semantic similarity metric of Czolbe et al. 2021 (eq. 2), on tensors (2D and 3D).

    DeepSim(I∘Φ, J) = 1/L Σ_l 1/|Ω_l| Σ_p ⟨F^l_p(I∘Φ), F^l_p(J)⟩ / (‖F^l_p(I∘Φ)‖ ‖F^l_p(J)‖)

F^l are the encoder levels of a U-Net trained on segmentation and then frozen
(:class:`networks.deepsim_unet.FeatureExtractorUNet`). Images are batches (B, 1, *shape) with the
intensities prepared as for the extractor's training (``deformable.model_input.normalize_intensity``)
and at its voxel spacing (stated in the feature model's metadata).

:class:`DeepSim` offers the metric three ways: ``similarity`` (eq. 2, in [-1, 1], 1 for identical
inputs), ``loss`` = 1 − DeepSim (the D of eq. 1), and calling the object, ``deepsim(a, b, mask)``,
which is that loss with an optional voxel mask: the signature ``similarity(a, b, mask) -> scalar
dissimilarity`` of the diffeomorphic trainer's ε (``training.diffeo_trainer.train(..., similarity=deepsim)``).
With a mask (B, 1, *shape) of weights in [0, 1], each layer's mean over voxels becomes a weighted mean
with the mask averaged down to that layer's resolution (an extension for masked losses; the paper has
no mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.model_file import load_network
from ..networks.deepsim_unet import FeatureExtractorUNet, UNetConfig

#: ``kind`` of a feature-extractor model file
FEATURE_MODEL_KIND = "deepsim-features"
#: norms below this count as this in the cosine's denominator (no division by zero on flat regions)
EPS = 1e-6


def cosine_similarity_map(fa: torch.Tensor, fb: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """⟨a_p, b_p⟩ / (‖a_p‖ ‖b_p‖) at every voxel p of two feature maps (B, C, *Ω) -> (B, *Ω)."""
    dot = (fa * fb).sum(dim=1)
    return dot / (fa.norm(dim=1).clamp(min=eps) * fb.norm(dim=1).clamp(min=eps))


def _mask_at(mask: torch.Tensor, shape) -> torch.Tensor:
    pool = F.adaptive_avg_pool2d if len(shape) == 2 else F.adaptive_avg_pool3d
    return pool(mask.to(torch.float32), tuple(shape))[:, 0]


def deepsim_from_features(features_a: list, features_b: list, mask: torch.Tensor = None) -> torch.Tensor:
    """Eq. 2 for each pair of a batch: mean over layers of the (weighted) mean cosine similarity -> (B,)."""
    per_layer = []
    for fa, fb in zip(features_a, features_b):
        cos = cosine_similarity_map(fa, fb).flatten(1)
        if mask is None:
            per_layer.append(cos.mean(dim=1))
        else:
            w = _mask_at(mask, fa.shape[2:]).flatten(1)
            per_layer.append((cos * w).sum(dim=1) / w.sum(dim=1).clamp(min=EPS))
    return torch.stack(per_layer).mean(dim=0)


class DeepSim:
    """DeepSim with a frozen feature extractor: its weights never receive gradients, the images do."""

    def __init__(self, extractor: FeatureExtractorUNet, metadata: dict = None):
        self.extractor = extractor.eval()
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self.metadata = metadata or {}
        self.__name__ = "deepsim"

    @property
    def ndim(self) -> int:
        return self.extractor.config.ndim

    def to(self, device) -> "DeepSim":
        self.extractor.to(device)
        return self

    def per_pair(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        """DeepSim(a_i, b_i) for every pair i of the batch (B,)."""
        if a.shape != b.shape:
            raise ValueError(f"DeepSim compares equally shaped batches, got {tuple(a.shape)} and {tuple(b.shape)}")
        if next(self.extractor.parameters()).device != a.device:
            self.extractor.to(a.device)
        return deepsim_from_features(self.extractor.features(a), self.extractor.features(b), mask)

    def similarity(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        """Eq. 2, averaged over the batch: 1 for identical inputs, lower the less they agree."""
        return self.per_pair(a, b, mask).mean()

    def loss(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        """D(I∘Φ, J) of eq. 1: 1 − DeepSim, in [0, 2]."""
        return 1.0 - self.similarity(a, b, mask)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        return self.loss(a, b, mask)


def load_feature_extractor(name_or_path, device="cpu"):
    """``(network, metadata)`` of a DeepSim feature-extractor model file, in eval mode on ``device``."""
    return load_network(name_or_path, FEATURE_MODEL_KIND, lambda c: FeatureExtractorUNet(UNetConfig(**c)),
                        "feature-extractor", device)


def load_deepsim(name_or_path, device="cpu") -> DeepSim:
    """The DeepSim metric of a trained feature-extractor model (bundled name or file)."""
    net, meta = load_feature_extractor(name_or_path, device)
    return DeepSim(net, meta)
