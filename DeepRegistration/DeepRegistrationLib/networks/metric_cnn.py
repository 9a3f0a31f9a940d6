"""The 2-channel 3D CNN metric of Sedghi et al. 2018, §2.2.

Fixed patch u(p) and moving patch v(T(p)) are stacked as two input channels (early fusion).
§2.2 reads "a 5-layer architecture consisting of 3 convolutional layers (filter size 5 followed by
3 layers of filter size 3, all stride 2), a pooling layer, a dense layer and a final softmax layer".
The count of 3×3×3 layers is ambiguous (two or three). We take the count that makes the sentence
add up to five layers: **3 convolutional layers** (one 5³ then two 3³, all stride 2) + a global
average pooling layer + a dense layer; the softmax is only in the loss. ``conv_layers`` in the
architecture metadata records the choice (and lets a model use 4).

The registration score of a patch pair (eq. 2's M) is the pre-softmax log-likelihood ratio
``logit(registered) - logit(not registered)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import InputError

ARCHITECTURE_NAME = "sedghi2018-2ch-3dcnn"
#: class index of "registered" (positive) patch pairs; 0 is "not registered".
REGISTERED = 1


def default_architecture(channels=(16, 32, 32), dropout: float = 0.5) -> dict:
    """Architecture metadata: 3 stride-2 conv layers (kernels 5, 3, 3), global average pool, dense, 2 logits."""
    channels = [int(c) for c in channels]
    return {"name": ARCHITECTURE_NAME, "conv_layers": len(channels), "channels": channels,
            "kernels": [5] + [3] * (len(channels) - 1), "stride": 2, "pooling": "global average",
            "dense_outputs": 2, "dropout": float(dropout), "activation": "ReLU"}


class MetricCNN(nn.Module):
    """Input (N, 2, P, P, P) [fixed, moving], output (N, 2) logits [not registered, registered]."""

    def __init__(self, architecture: dict = None):
        super().__init__()
        arch = architecture or default_architecture()
        if arch.get("name") != ARCHITECTURE_NAME:
            raise InputError(f"unknown metric architecture {arch.get('name')!r} (expected {ARCHITECTURE_NAME!r})")
        if len(arch["channels"]) != arch["conv_layers"] or len(arch["kernels"]) != arch["conv_layers"]:
            raise InputError("metric architecture: channels/kernels do not match conv_layers")
        self.architecture = dict(arch)
        layers, c_in = [], 2
        for c_out, k in zip(arch["channels"], arch["kernels"]):
            layers += [nn.Conv3d(c_in, c_out, k, stride=arch["stride"], padding=k // 2), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(arch["dropout"])
        self.dense = nn.Linear(c_in, arch["dense_outputs"])

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(pairs)).flatten(1)
        return self.dense(self.dropout(x))

    def score(self, pairs: torch.Tensor) -> torch.Tensor:
        """Per-pair log-likelihood ratio logit(registered) - logit(not registered) (§2.2, 'Registration')."""
        logits = self(pairs)
        return logits[:, REGISTERED] - logits[:, 1 - REGISTERED]
