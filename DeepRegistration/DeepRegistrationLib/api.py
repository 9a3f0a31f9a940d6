"""One entry point for every registration method, used by the CLI, the Slicer logic and the benchmarks.

``register(fixed, moving, method=...)`` validates the inputs, parses the method's options against its
spec, resolves the device, runs the method and returns a :class:`RegistrationResult`; ``write_outputs``
saves it. The methods and their specs are in :mod:`.methods`.
"""
from __future__ import annotations

import importlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .core.device import resolve_device
from .core.errors import InputError
from .core.image import Image
from .core.io import write_image
from .core.progress import as_progress
from .core.transforms import LinearTransform, RigidTransform, write_transform
from .core.validation import check_overlap, check_volume
from .core.warp import warp
from .method_spec import RegistrationContext
from .methods import method_spec
from .metrics.quality_report import quality_report


@dataclass
class RegistrationResult:
    transform: object
    warped: Image
    report: dict
    inverse: object = None
    jacobian: Optional[Image] = None
    fixed: Optional[Image] = None
    moving: Optional[Image] = None

    def inverse_warped(self) -> Image:
        """The fixed image resampled onto the moving grid with the inverse transform."""
        if self.inverse is None:
            raise InputError("this result has no inverse transform")
        return warp(self.fixed, self.moving.grid, self.inverse)


def transform_report(transform) -> dict:
    """Parameters and matrix of a linear transform (LPS, fixed -> moving)."""
    if isinstance(transform, RigidTransform):
        return {"transform_type": "Euler3DTransform", "parameters": transform.parameters.tolist(),
                "angles_deg": np.degrees(transform.angles_rad).tolist(), "translation_mm": transform.translation_mm.tolist(),
                "center_mm": transform.center_mm.tolist(), "matrix_lps": transform.matrix4().tolist()}
    if isinstance(transform, LinearTransform):
        return {"transform_type": "AffineTransform", "matrix_lps": transform.matrix4().tolist()}
    return {"transform_type": type(transform).__name__}


def register(fixed: Image, moving: Image, method: str = "nmi", device: str = "auto", progress=None,
             initial_transform=None, fixed_mask: Image = None, moving_mask: Image = None, models=None,
             **options) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; the result's transform maps fixed points to moving points.

    ``models``: model names or files for the methods that take them (the spec's default otherwise, noted in
    the report); ``options``: the method's options (see ``methods.SPECS[method].options``).
    """
    spec = method_spec(method)
    parsed = spec.parse_options(options)
    model_names = spec.parse_models(models)
    spec.check_masks(fixed_mask, moving_mask)
    check_volume(fixed, "fixed image")
    check_volume(moving, "moving image")
    for mask, name in ((fixed_mask, "fixed mask"), (moving_mask, "moving mask")):
        if mask is not None and mask.grid.ndim != 3:
            raise InputError(f"{name} must be 3D")
    check_overlap(fixed, moving, initial_transform)
    torch_device = resolve_device(device)
    progress = as_progress(progress)
    if initial_transform is None:
        initial_transform = RigidTransform(center_mm=fixed.grid.center_physical())
    note = {}
    if spec.model_kind and not model_names:
        model_names = [spec.default_model]
        note["model_note"] = (f"--method {method}: no --model given; used the bundled model '{spec.default_model}' "
                              "(see its model card)")
    ctx = RegistrationContext(torch_device, progress, initial_transform, parsed, model_names, fixed_mask, moving_mask)

    t0 = time.perf_counter()
    with _out_of_memory_as_input_error(torch_device, fixed):
        out = importlib.import_module(spec.module).run(fixed, moving, ctx)
        t_method = time.perf_counter() - t0
        progress(0.97, "resampling")
        t1 = time.perf_counter()
        warped = warp(moving, fixed.grid, out.transform, device=torch_device)
        t_warp = time.perf_counter() - t1

    quality, jac_img = quality_report(fixed, moving, initial_transform, out.transform, out.inverse, torch_device,
                                      deformable=spec.deformable)
    report = {
        "method": method, "method_description": spec.label, "options": _jsonable(parsed), "device": str(torch_device),
        "fixed_grid": fixed.grid.to_dict(), "moving_grid": moving.grid.to_dict(),
        **quality, **transform_report(out.transform), **note, **out.report,
    }
    report["seconds_method"] = t_method
    report["seconds_resample"] = t_warp
    report["seconds_total"] = time.perf_counter() - t0
    progress(1.0, "done")
    return RegistrationResult(out.transform, warped, report, out.inverse, jac_img, fixed, moving)


def _jsonable(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


@contextmanager
def _out_of_memory_as_input_error(device, fixed: Image):
    """Running out of (GPU or host) memory becomes one clear message; nothing has been written then."""
    try:
        yield
    except (MemoryError, torch.cuda.OutOfMemoryError) as err:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise InputError(
            f"out of memory on {device} registering a {' x '.join(map(str, fixed.grid.size))} volume "
            f"({type(err).__name__}); try --device cpu, a smaller prediction tile (--param tile=...), "
            "or downsample the images") from None


def write_outputs(result: RegistrationResult, out_transform=None, out_volume=None, report=None, out_inverse=None,
                  out_jacobian=None, out_inverse_volume=None) -> dict:
    """Write what was asked for; returns {kind: path}. Each file is written atomically."""
    written = {}
    if out_inverse is not None and result.inverse is None:
        raise InputError("--out-inverse: this method produced no inverse transform")
    if out_jacobian is not None and result.jacobian is None:
        raise InputError("--out-jacobian: this method produced no deformation field (rigid methods have det J = 1)")
    if out_transform:
        write_transform(result.transform, out_transform)
        written["transform"] = str(out_transform)
    if out_inverse:
        write_transform(result.inverse, out_inverse)
        written["inverse"] = str(out_inverse)
    if out_volume:
        write_image(result.warped, out_volume)
        written["volume"] = str(out_volume)
    if out_inverse_volume:
        write_image(result.inverse_warped(), out_inverse_volume)
        written["inverse_volume"] = str(out_inverse_volume)
    if out_jacobian:
        write_image(result.jacobian, out_jacobian)
        written["jacobian"] = str(out_jacobian)
    if report:
        path = Path(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({**result.report, "outputs": written}, indent=2))
        os.replace(tmp, path)
        written["report"] = str(path)
    return written
