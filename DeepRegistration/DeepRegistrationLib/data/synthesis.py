"""Synthetic subjects in SynthMorph's manner (Hoffmann et al., IEEE TMI 2022, §III-B and Fig. 2).

From a label map: the labels are deformed by a random smooth diffeomorphism, every label gets a random
intensity distribution (a Gaussian mixture: mean μ_j ~ U(25, 225), std σ_j ~ U(5, 25) per label j), the
image is blurred, multiplied by a smooth random bias field, min-max normalized and gamma-transformed:

    φ = exp(v), v = B-spline of control values ~ N(0, σ_v²), σ_v ~ U(0, b_v)      (the paper's SVF)
    I = [ (G_σK * GMM(s∘φ)) · exp(B) ]₀¹ ^ exp(γ),  σ_K ~ U(0, b_K), B ~ N(0, σ_B²) upsampled, γ ~ N(0, σ_γ²)

The defaults are the paper's where its units carry over (μ_j, σ_j, b_K = 1 voxel, σ_B ≤ 0.3 at 1:40,
σ_γ = 0.25); b_v is ours, in mm (6 mm at 16 mm control spacing: mean displacements of 0.3-3 mm, up to
about 10 mm). As SynthSeg does (Billot et al. 2023), we add a random acquisition resolution (each axis
down-sampled by U(1, r) and back), additive noise after normalization and a random field-of-view crop (the
image is set to 0 beyond a random box), so that the images look like partial, low-resolution scans.

From a real intensity image, the same deformation and appearance changes (gamma, bias, blur, resolution,
noise, field of view) make a new "subject" of the same person: it belongs to its source subject's split.

Unimodal trainers need the two images of a pair in one contrast: :func:`random_contrast` draws the
per-label intensities once and both images use it (our interpretation; SynthMorph's own loss compares
label maps, so it can draw a contrast per image). Every draw comes from the ``rng`` given: a seed fixes
the subject.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..core.image import Grid, Image
from ..core.settings import Settings
from ..core.transforms import DisplacementField
from ..core.warp import warp
from .synthetic import bspline_field, scaling_and_squaring


@dataclass(frozen=True)
class SynthesisSettings(Settings):
    """The random ranges of one synthetic subject (paper's values where it gives them)."""

    velocity_std_mm: float = 6.0              # b_v (ours, in mm): σ_v ~ U(0, b_v), control values ~ N(0, σ_v²)
    velocity_spacing_mm: float = 16.0         # SVF control spacing (the paper's 1:16 of a 1 mm, 256³ image)
    label_mean_range: tuple = (25.0, 225.0)   # μ_j ~ U (paper)
    label_std_range: tuple = (5.0, 25.0)      # σ_j ~ U (paper)
    blur_max_vox: float = 1.0                 # b_K: σ_K ~ U(0, b_K) voxels (paper)
    bias_std_max: float = 0.3                 # b_B: σ_B ~ U(0, b_B) (paper)
    bias_spacing_mm: float = 40.0             # bias field control spacing (the paper's 1:40)
    gamma_std: float = 0.25                   # σ_γ (paper)
    noise_std_max: float = 0.03               # ours: additive noise σ ~ U(0, this) after normalization
    resolution_max_factor: float = 2.0        # ours (SynthSeg): per-axis down-sampling factor ~ U(1, this)
    fov_crop_max: float = 0.1                 # ours: each side of each axis loses U(0, this) of its extent


@dataclass
class Synthesized:
    """One synthetic subject: ``image`` in [0, 1], its ``labels`` (or None), and the deformation
    ``field`` (fixed-space → source-space displacement) that made it from its source."""

    image: Image
    labels: Image
    field: DisplacementField


def random_diffeomorphism(grid: Grid, rng: np.random.Generator, s: SynthesisSettings) -> DisplacementField:
    """φ = exp(v): v a cubic B-spline of control values ~ N(0, σ_v²), σ_v ~ U(0, b_v), integrated by
    scaling and squaring (diffeomorphic)."""
    sigma = rng.uniform(0.0, s.velocity_std_mm)
    return scaling_and_squaring(bspline_field(grid, s.velocity_spacing_mm, lambda n: rng.normal(0.0, sigma, n)))


def random_contrast(label_values, rng: np.random.Generator, s: SynthesisSettings) -> dict:
    """{label: (μ, σ)}: the Gaussian-mixture intensities of one synthetic contrast; label 0 is always
    included (the deformation pulls it in from beyond the grid)."""
    return {int(v): (rng.uniform(*s.label_mean_range), rng.uniform(*s.label_std_range))
            for v in np.union1d(np.asarray(label_values), [0])}


def gaussian_mixture(labels: np.ndarray, contrast: dict, rng: np.random.Generator) -> np.ndarray:
    """Voxel intensities drawn from N(μ_j, σ_j²) of their label j."""
    values = np.asarray(sorted(contrast))
    index = np.searchsorted(values, labels)
    mean = np.array([contrast[v][0] for v in values], np.float32)[index]
    std = np.array([contrast[v][1] for v in values], np.float32)[index]
    return mean + std * rng.standard_normal(labels.shape).astype(np.float32)


def bias_field(grid: Grid, rng: np.random.Generator, s: SynthesisSettings) -> np.ndarray:
    """exp(B): B ~ N(0, σ_B²) on a coarse lattice (``bias_spacing_mm``), σ_B ~ U(0, b_B), cubically upsampled."""
    sigma = rng.uniform(0.0, s.bias_std_max)
    extent_zyx = ((np.asarray(grid.size) - 1) * grid.spacing)[::-1]
    coarse = [max(2, int(np.ceil(e / s.bias_spacing_mm)) + 1) for e in extent_zyx]
    field = torch.as_tensor(rng.normal(0.0, sigma, coarse).astype(np.float32))[None, None]
    fine = F.interpolate(field, size=grid.shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    return np.exp(fine)


def min_max(array: np.ndarray) -> np.ndarray:
    lo, hi = float(array.min()), float(array.max())
    return ((array - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def random_resolution(array: np.ndarray, rng: np.random.Generator, s: SynthesisSettings) -> np.ndarray:
    """An acquisition at a coarser resolution: per axis a factor f ~ U(1, r), Gaussian anti-aliasing
    (σ = f / 2 voxels where f > 1), down-sampling and linear up-sampling back to the grid."""
    factors = rng.uniform(1.0, s.resolution_max_factor, 3)
    blurred = gaussian_filter(array, [f / 2.0 if f > 1.0 else 0.0 for f in factors])
    low = [max(2, int(round(n / f))) for n, f in zip(array.shape, factors)]
    t = torch.as_tensor(blurred)[None, None]
    t = F.interpolate(F.interpolate(t, size=low, mode="trilinear", align_corners=True),
                      size=array.shape, mode="trilinear", align_corners=True)
    return t[0, 0].numpy()


def field_of_view(shape, rng: np.random.Generator, s: SynthesisSettings) -> np.ndarray:
    """A random box (bool mask): every side of every axis loses U(0, ``fov_crop_max``) of the extent."""
    keep = np.zeros(shape, bool)
    box = tuple(slice(int(rng.uniform(0, s.fov_crop_max) * n), n - int(rng.uniform(0, s.fov_crop_max) * n))
                for n in shape)
    keep[box] = True
    return keep


def random_gamma(rng: np.random.Generator, s: SynthesisSettings) -> float:
    """exp(γ), γ ~ N(0, σ_γ²): the exponent of the normalized intensities."""
    return float(np.exp(rng.normal(0.0, s.gamma_std)))


def appearance(array: np.ndarray, grid: Grid, rng: np.random.Generator, s: SynthesisSettings,
               gamma: float = None) -> np.ndarray:
    """The paper's blur, bias, normalization and gamma (a new :func:`random_gamma` when None), then our
    resolution, noise and field of view; in [0, 1]."""
    x = gaussian_filter(array.astype(np.float32), rng.uniform(0.0, s.blur_max_vox))
    x = min_max(x * bias_field(grid, rng, s))
    x = x ** np.float32(gamma if gamma is not None else random_gamma(rng, s))
    x = random_resolution(x, rng, s)
    x = x + rng.normal(0.0, rng.uniform(0.0, s.noise_std_max), x.shape).astype(np.float32)
    return np.clip(np.where(field_of_view(x.shape, rng, s), x, 0.0), 0.0, 1.0).astype(np.float32)


def from_labels(labels: Image, rng: np.random.Generator, s: SynthesisSettings, contrast: dict = None,
                gamma: float = None) -> Synthesized:
    """A subject synthesized from a label map: deformed labels, a Gaussian mixture of ``contrast`` (a new
    random one when None), then :func:`appearance` (with ``gamma`` when given)."""
    field = random_diffeomorphism(labels.grid, rng, s)
    deformed = warp(labels, labels.grid, field, mode="nearest").array.astype(np.int16)
    contrast = contrast if contrast is not None else random_contrast(np.unique(labels.array), rng, s)
    image = appearance(gaussian_mixture(deformed, contrast, rng), labels.grid, rng, s, gamma)
    return Synthesized(Image(image, labels.grid), Image(deformed, labels.grid), field)


def from_image(image: Image, rng: np.random.Generator, s: SynthesisSettings, labels: Image = None,
               gamma: float = None) -> Synthesized:
    """A new subject from a real intensity image (and its labels, deformed alike): a random deformation,
    then :func:`appearance` of the min-max normalized intensities."""
    field = random_diffeomorphism(image.grid, rng, s)
    deformed = warp(image, image.grid, field).array
    warped_labels = None if labels is None else Image(
        warp(labels, image.grid, field, mode="nearest").array.astype(np.int16), image.grid)
    return Synthesized(Image(appearance(min_max(deformed), image.grid, rng, s, gamma), image.grid), warped_labels,
                       field)
