"""Choosing the torch device (auto, cpu or cuda) and the arithmetic a network runs in on it."""
from __future__ import annotations

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "float32", "bfloat16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without CUDA is an error."""
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but PyTorch sees no CUDA device on this machine")
    return torch.device(name)


def has_native_bfloat16(device) -> bool:
    """True on a CPU with bfloat16 instructions (AVX-512 BF16 or AMX), where oneDNN's bfloat16 convolutions
    are fast (the momentum U-Net: 2.1x float32, benchmarks/ablations/diffeo_tiles.py); False elsewhere, including every
    CUDA device (not measured there)."""
    if torch.device(device).type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)       # older PyTorch lacks the probes: float32


def resolve_precision(name: str, device) -> str:
    """``float32`` or ``bfloat16`` for a network's forward pass; ``auto`` is bfloat16 where
    :func:`has_native_bfloat16`, else float32."""
    name = str(name or "auto").lower()
    if name not in PRECISION_CHOICES:
        raise InputError(f"unknown precision {name!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    if name == "auto":
        return "bfloat16" if has_native_bfloat16(device) else "float32"
    return name
