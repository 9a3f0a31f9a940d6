"""Registering one pair with any method (imported through :mod:`.api`, which also runs batches).

``register(fixed, moving, method=...)`` validates the inputs, parses the method's options against its
spec, resolves the device, runs the method (or the pipeline of methods, :mod:`.pipeline`) and returns a
:class:`RegistrationResult`; ``write_outputs`` saves it. The methods and their specs are in :mod:`.methods`.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .core.device import resolve_device
from .core.errors import InputError
from .core.image import Image
from .core.io import write_image
from .core.progress import as_progress
from .core.transforms import RigidTransform, write_transform
from .core.validation import check_overlap, check_volume
from .core.warp import warp
from .pipeline import jsonable, plan, run as run_stages, transform_report
from .metrics.quality_report import folding_warning, quality_report


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


def register(fixed: Image, moving: Image, method: str = "nmi", device: str = "auto", progress=None,
             initial_transform=None, fixed_mask: Image = None, moving_mask: Image = None, models=None,
             **options) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; the result's transform maps fixed points to moving points.

    ``method``: one method or a pipeline of methods joined by '+' (``"nmi+nmi-affine+diffeo"``, see
    :mod:`.pipeline`). ``models``: model names or files for the methods that take them (the spec's default
    otherwise, noted in the report); ``options``: the method's options (see ``methods.SPECS[method].options``;
    in a pipeline ``KEY`` goes to every stage with that option, ``"STAGE.KEY"`` to one stage).
    """
    stages = plan(method, options, models, fixed_mask, moving_mask)
    check_volume(fixed, "fixed image")
    check_volume(moving, "moving image")
    for mask, name in ((fixed_mask, "fixed mask"), (moving_mask, "moving mask")):
        if mask is not None and mask.grid.ndim != 3:
            raise InputError(f"{name} must be 3D")
    check_overlap(fixed, moving, initial_transform)
    torch_device = resolve_device(device)
    progress = as_progress(progress)
    initial_given = initial_transform is not None
    if not initial_given:
        initial_transform = RigidTransform(center_mm=fixed.grid.center_physical())
    notes = [s.model_note for s in stages if s.model_note]
    note = {"model_note": " ".join(notes)} if notes else {}

    t0 = time.perf_counter()
    with _out_of_memory_as_input_error(torch_device, fixed):
        out = run_stages(stages, fixed, moving, initial_transform, torch_device, progress.sub(0.0, 0.96),
                         fixed_mask, moving_mask, initial_given)
        t_method = time.perf_counter() - t0
        progress(0.97, "resampling")
        t1 = time.perf_counter()
        warped = warp(moving, fixed.grid, out.transform, device=torch_device)
        t_warp = time.perf_counter() - t1

    last = stages[-1].spec
    quality, jac_img = quality_report(fixed, moving, initial_transform, out.transform, out.inverse, torch_device,
                                      deformable=last.deformable)
    description = " → ".join(s.spec.label for s in stages)
    options_report = (jsonable(stages[0].options) if len(stages) == 1 else
                      {s.spec.name: jsonable(s.options) for s in stages})
    report = {
        "method": method, "method_description": description, "options": options_report, "device": str(torch_device),
        "fixed_grid": fixed.grid.to_dict(), "moving_grid": moving.grid.to_dict(),
        **quality, **transform_report(out.transform), **note, **out.report,
    }
    folding = folding_warning(quality)
    if folding:
        report["warnings"] = [*report.get("warnings", []), folding]
    report["seconds_method"] = t_method
    report["seconds_resample"] = t_warp
    report["seconds_total"] = time.perf_counter() - t0
    progress(1.0, "done")
    return RegistrationResult(out.transform, warped, report, out.inverse, jac_img, fixed, moving)


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
