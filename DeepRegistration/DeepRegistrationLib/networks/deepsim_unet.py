"""The two U-Nets of DeepSim (Czolbe et al. 2021, §3 and Fig. 1), 2D and 3D.

- :class:`FeatureExtractorUNet`: a U-Net (Ronneberger et al.) trained on a segmentation task; once
  trained it is frozen and its ``features(x)`` are the maps F^l of DeepSim's eq. 2.
- :class:`RegistrationUNet`: a VoxelMorph-style U-Net taking the moving and the fixed image as two
  channels and predicting a dense displacement u (voxels, x-first channels, as
  :mod:`core.spatial_transformer` expects), so Φ(x) = x + u(x) and I∘Φ = warp_voxels(I, u).

Both share one body: at every level a block of two 3×3 convolutions with LeakyReLU(0.2); 2× max
pooling down (feature extractor, as the original U-Net) or 2× strided convolutions (registration
network, as VoxelMorph); 2× linear up-sampling, skip concatenation and a block on the way up; a 1×1
output convolution. Interpretations (the paper gives the networks only as "U-nets"): the widths are
small (``channels`` per level) so that the models train on a CPU in minutes; DeepSim's layers F^l are
the outputs of the encoder blocks, one per resolution level (the bottleneck included), so the metric
compares localized features (full resolution) and more abstract ones (coarser levels); the
registration head starts near zero so that an untrained network predicts the identity (VoxelMorph).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.settings import Settings

#: slope of the LeakyReLU activations
LEAKY_SLOPE = 0.2


@dataclass
class UNetConfig(Settings):
    """Architecture of a DeepSim U-Net; stored in model metadata."""

    ndim: int = 3
    in_channels: int = 1
    out_channels: int = 4
    channels: tuple = (8, 16, 32)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.ndim not in (2, 3):
            raise ValueError(f"a DeepSim U-Net is 2D or 3D, not {self.ndim}D")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels {self.channels}: at least two levels of positive widths are needed")

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.channels) - 1)


def _conv(ndim: int):
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _block(ndim: int, cin: int, cout: int) -> nn.Sequential:
    conv = _conv(ndim)
    return nn.Sequential(conv(cin, cout, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
                         conv(cout, cout, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE))


class _UNet(nn.Module):
    """Encoder blocks, down-sampling, up-sampling with skip concatenations, 1×1 head."""

    def __init__(self, config: UNetConfig, strided: bool):
        super().__init__()
        self.config = config
        c, nd, conv = config.channels, config.ndim, _conv(config.ndim)
        self.encoders = nn.ModuleList([_block(nd, config.in_channels, c[0])] +
                                      [_block(nd, c[i - 1], c[i]) for i in range(1, len(c))])
        if strided:
            self.downs = nn.ModuleList([nn.Sequential(conv(c[i], c[i], 2, stride=2), nn.LeakyReLU(LEAKY_SLOPE))
                                        for i in range(len(c) - 1)])
        else:
            pool = nn.MaxPool2d if nd == 2 else nn.MaxPool3d
            self.downs = nn.ModuleList([pool(2) for _ in range(len(c) - 1)])
        self.decoders = nn.ModuleList([_block(nd, c[i + 1] + c[i], c[i]) for i in range(len(c) - 1)])
        self.head = conv(c[0], config.out_channels, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def check_input(self, x: torch.Tensor) -> None:
        shape = tuple(x.shape[2:])
        if x.dim() != self.config.ndim + 2 or any(s % self.config.divisor for s in shape):
            raise ValueError(f"input of shape {tuple(x.shape)}: a (B, {self.config.in_channels}, "
                             f"{'×'.join(['n'] * self.config.ndim)}) batch with sides divisible by "
                             f"{self.config.divisor} is needed")

    def encode(self, x: torch.Tensor) -> list:
        """The encoder blocks' outputs, finest first (the bottleneck last)."""
        self.check_input(x)
        outputs = [self.encoders[0](x)]
        for down, encoder in zip(self.downs, self.encoders[1:]):
            outputs.append(encoder(down(outputs[-1])))
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encode(x)
        y = skips[-1]
        mode = "bilinear" if self.config.ndim == 2 else "trilinear"
        for level in reversed(range(len(skips) - 1)):
            y = F.interpolate(y, size=skips[level].shape[2:], mode=mode, align_corners=False)
            y = self.decoders[level](torch.cat([y, skips[level]], dim=1))
        return self.head(y)


class FeatureExtractorUNet(_UNet):
    """Segmentation U-Net: ``forward`` gives class logits; ``features`` gives DeepSim's F^l (eq. 2)."""

    def __init__(self, config: UNetConfig):
        super().__init__(config, strided=False)

    def features(self, x: torch.Tensor) -> list:
        """F^l(x) for l = 1..L: one map (B, C_l, *Ω_l) per resolution level, finest first."""
        return self.encode(x)


class RegistrationUNet(_UNet):
    """VoxelMorph-style registration U-Net: (moving, fixed) -> displacement u in voxels, x-first channels."""

    #: standard deviation of the output layer's initial weights (near-identity start, as VoxelMorph)
    HEAD_INIT_STD = 1e-5

    def __init__(self, config: UNetConfig):
        if config.in_channels != 2 or config.out_channels != config.ndim:
            raise ValueError(f"a registration U-Net takes 2 channels and predicts {config.ndim}, "
                             f"not {config.in_channels} -> {config.out_channels}")
        super().__init__(config, strided=True)
        nn.init.normal_(self.head.weight, std=self.HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    def displacement(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """u (B, ndim, *shape) in voxels such that moving(x + u(x)) matches fixed(x)."""
        return self(torch.cat([moving, fixed], dim=1))


def registration_config(ndim: int, channels=(8, 16, 16, 32)) -> UNetConfig:
    return UNetConfig(ndim=ndim, in_channels=2, out_channels=ndim, channels=tuple(channels))


def feature_config(ndim: int, classes: int, channels=(8, 16, 32)) -> UNetConfig:
    return UNetConfig(ndim=ndim, in_channels=1, out_channels=classes, channels=tuple(channels))
