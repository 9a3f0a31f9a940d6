"""DIRNet (de Vos et al. 2017, §2): a fully convolutional ConvNet regressor of B-spline control points.

The regressor takes the concatenated fixed and moving images and applies alternating 3×3 convolutions
(zero padding) and 2×2 downsampling, then three 1×1 convolutions; batch normalization in every layer,
ELU activations except the linear output layer, whose channels are the image dimension. Each output
voxel is the displacement (voxels, x-first) of one control point of the B-spline transformer, so the
input size and the number of downsamplings set the control-point grid and its spacing (2^downsamplings
voxels). Variants of the paper's Table 1: ``pooling='max'`` (A1), ``pooling='stride'`` (A2, 2×2
strided convolutions), ``spline_order=2`` (B1, quadratic B-spline), ``overlapping=True`` (C1, an extra
3×3 convolution before and after the final pooling layer).

Interpretations: the output layer's batch normalization (the paper says "every layer") starts with
scale 0.1 so that training starts near the identity; "2×2 downsampling" is 2×2×2 in 3D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.bspline import SPLINE_ORDERS, bspline_displacement
from ..core.settings import Settings
from ..core.spatial_transformer import warp_voxels

POOLINGS = ("avg", "max", "stride")
#: Table 1 of the paper: variant name -> options that differ from the baseline (BL).
VARIANTS = {"BL": {}, "A1": {"pooling": "max"}, "A2": {"pooling": "stride"}, "B1": {"spline_order": 2},
            "C1": {"overlapping": True}}
OUTPUT_BN_INITIAL_SCALE = 0.1


@dataclass
class DIRNetConfig(Settings):
    """Architecture of a DIRNet; stored in model metadata."""

    ndim: int = 2
    channels: int = 16
    conv_layers: int = 4
    downsamplings: int = 4
    pooling: str = "avg"
    spline_order: int = 3
    overlapping: bool = False

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"DIRNet is 2D or 3D, not {self.ndim}D")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: choose one of {POOLINGS}")
        if self.spline_order not in SPLINE_ORDERS:
            raise ValueError(f"spline order {self.spline_order}: choose one of {SPLINE_ORDERS}")
        if not 0 <= self.downsamplings <= self.conv_layers:
            raise ValueError(f"{self.downsamplings} downsamplings need at least as many 3x3 convolutions "
                             f"(conv_layers={self.conv_layers})")

    @property
    def downsampling_factor(self) -> int:
        """Control-point spacing in input voxels."""
        return 2 ** self.downsamplings

    def control_shape(self, image_shape) -> tuple:
        """Control grid (z-first) of an input of ``image_shape`` (z-first); each axis must divide evenly."""
        f = self.downsampling_factor
        bad = [s for s in image_shape if s % f]
        if bad:
            raise ValueError(f"input shape {tuple(image_shape)} is not divisible by {f} "
                             f"(2^{self.downsamplings} downsamplings) along every axis")
        return tuple(s // f for s in image_shape)

    @classmethod
    def variant(cls, name: str, **options) -> "DIRNetConfig":
        if name not in VARIANTS:
            raise ValueError(f"unknown DIRNet variant {name!r}: choose one of {', '.join(VARIANTS)}")
        return cls(**{**options, **VARIANTS[name]})


def _layers(ndim: int):
    if ndim == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d
    return nn.Conv3d, nn.BatchNorm3d, nn.AvgPool3d, nn.MaxPool3d


def _conv_block(ndim: int, cin: int, cout: int, kernel: int, stride: int = 1, activation: bool = True) -> nn.Sequential:
    conv, bn, _, _ = _layers(ndim)
    parts = [conv(cin, cout, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0), bn(cout)]
    if activation:
        parts.append(nn.ELU())
    return nn.Sequential(*parts)


class DIRNetRegressor(nn.Module):
    """ConvNet regressor: (B, 2, *shape) fixed ‖ moving -> (B, ndim, *shape / 2^downsamplings) control points."""

    def __init__(self, config: DIRNetConfig):
        super().__init__()
        self.config = config
        c, d = config.channels, config.ndim
        _, _, avg, mx = _layers(d)
        layers, cin = [], 2
        for i in range(config.conv_layers):
            layers.append(_conv_block(d, cin, c, 3))
            cin = c
            if i >= config.downsamplings:
                continue
            final = i == config.downsamplings - 1
            if final and config.overlapping:
                layers.append(_conv_block(d, c, c, 3))
            if config.pooling == "avg":
                layers.append(avg(2))
            elif config.pooling == "max":
                layers.append(mx(2))
            else:
                layers.append(_conv_block(d, c, c, 2, stride=2))
            if final and config.overlapping:
                layers.append(_conv_block(d, c, c, 3))
        layers += [_conv_block(d, c, c, 1), _conv_block(d, c, c, 1), _conv_block(d, c, d, 1, activation=False)]
        self.layers = nn.Sequential(*layers)
        nn.init.constant_(self.layers[-1][1].weight, OUTPUT_BN_INITIAL_SCALE)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        self.config.control_shape(fixed.shape[2:])
        return self.layers(torch.cat([fixed, moving], dim=1))


class DIRNet(nn.Module):
    """Regressor + B-spline transformer + resampler (Fig. 1): ``forward(fixed, moving)`` returns
    ``(warped, displacement, control)``; warped(x) = moving(x + u(x)), u in voxels, x-first channels."""

    def __init__(self, config: DIRNetConfig):
        super().__init__()
        self.config = config
        self.regressor = DIRNetRegressor(config)

    def displacement(self, fixed: torch.Tensor, moving: torch.Tensor):
        control = self.regressor(fixed, moving)
        return bspline_displacement(control, fixed.shape[2:], self.config.spline_order), control

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        u, control = self.displacement(fixed, moving)
        return warp_voxels(moving, u), u, control
