"""One entry point for every registration method, used by the CLI, the Slicer logic and the benchmarks.

``register(fixed, moving, method=...)`` registers one pair and ``write_outputs`` saves its result
(:mod:`.registration`); ``register_batch`` registers the pairs of a cohort (:mod:`.batch`). The methods and
their specs are in :mod:`.methods`.
"""
from __future__ import annotations

from .registration import RegistrationResult, register, write_outputs

__all__ = ["RegistrationResult", "register", "register_batch", "write_outputs"]


def register_batch(pairs, method: str = "nmi", out="batch", **settings):
    """Register every pair of a pairs CSV (or list of ``batch.pairs.Pair``) on Dask into ``out``, resumably,
    and write the QA report ``out/report.html``; ``settings`` as :func:`batch.runner.run_batch` takes them
    (``params``, ``models``, ``scheduler``, ``workers``, ``threads_per_worker``, ``device``, ``progress``).
    Needs the ``batch`` extra (``dask[distributed]``)."""
    from .batch.runner import run_batch

    return run_batch(pairs, method, out, **settings)
