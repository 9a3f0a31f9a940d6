"""Cohort registration inside Slicer: volumes of the scene, or image files, to a reference through the
module logic, with the same per-pair folders, resuming and QA report as ``deepregistration batch``.

Pairs run one after the other in Slicer's process (the nodes live there). Each goes through
``process(reference, volume, method=..., device=..., options=..., progress=...)``: the module's
``DeepRegistrationLogic().process`` in Slicer, or :func:`~DeepRegistrationLib.mrml.register_nodes` (the
default, which that method calls). Volume nodes keep their result nodes in the scene (marked with the
node attribute :data:`OUTPUT_ATTRIBUTE`, so that a later batch over the scene leaves them out); a file is
loaded into the scene for its pair only, and it and its result nodes are removed once recorded, so a
folder of any size fits in memory. A pair is named after its node (or file); its hash covers the voxels
and geometry of both volumes (a file's bytes) and the settings.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..core.errors import Cancelled
from ..core.progress import as_progress
from . import store
from .job import attempt, record_result
from .pairs import _safe, stem
from .report import write_report
from .runner import BatchResult

#: node attribute set on the nodes a batch adds to the scene
OUTPUT_ATTRIBUTE = "DeepRegistration.batchOutput"


def image_digest(image) -> str:
    h = hashlib.sha256(json.dumps(image.grid.to_dict(), sort_keys=True).encode())
    h.update(str(image.array.dtype).encode())
    h.update(image.array.tobytes())
    return h.hexdigest()


def unique_ids(names: list) -> list:
    ids = []
    for name in names:
        base = _safe(name)
        candidate, n = base, 2
        while candidate in ids:
            candidate, n = f"{base}-{n}", n + 1
        ids.append(candidate)
    return ids


def _is_file(item) -> bool:
    return isinstance(item, (str, Path))


def _load(path, scene):
    from .. import mrml
    from ..core.io import read_image

    return mrml.image_to_volume_node(read_image(path, str(path)), scene, stem(str(path)))


def _digest(item) -> str:
    from .. import mrml

    if _is_file(item):
        return store.file_digest(item)
    try:
        return image_digest(mrml.volume_node_to_image(item, item.GetName()))
    except Exception:  # noqa: BLE001 - a node without voxels fails when registered, with its error recorded
        return "unreadable"


def _made_nodes(nodes: dict) -> list:
    """The nodes of a ``register_nodes`` result, a pipeline's stage transforms (a list) included."""
    return [n for value in nodes.values() for n in (value if isinstance(value, list) else [value])]


def _remove(scene, nodes) -> None:
    """Remove nodes with their display nodes (and a display's colour table, made per Jacobian volume)."""
    made = []
    for node in nodes:
        if node is None or not hasattr(node, "GetID"):
            continue
        made.append(node)
        for i in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
            display = node.GetNthDisplayNode(i)
            made.append(display)
            color = display.GetColorNode() if display is not None and hasattr(display, "GetColorNode") else None
            if color is not None and not color.GetSingletonTag():
                made.append(color)
    for node in made:
        if node is not None and node.GetScene() is scene:
            scene.RemoveNode(node)


def register_volumes(reference, volumes, out, method: str = "nmi", options: dict = None, process=None,
                     device: str = "auto", progress=None, title: str = None, scene=None) -> BatchResult:
    """Register each of ``volumes`` (volume nodes or image files) to ``reference`` (a node or a file) and
    write ``out/pairs/<name>/`` and the QA report ``out/report.html``. Files are loaded into ``scene``
    (default: the reference node's scene, else ``slicer.mrmlScene``). Complete pairs are skipped; a failing
    pair is recorded and the others go on; a cancel through ``progress`` stops after cleaning up and raises
    :class:`Cancelled`."""
    from .. import mrml

    process = process or mrml.register_nodes
    progress = as_progress(progress)
    options = dict(options or {})
    settings = {"method": method, "options": {k: str(v) for k, v in sorted(options.items())}}
    t0 = time.perf_counter()
    result = BatchResult(layout={"process": "in Slicer, one pair at a time"})
    scene = scene or (reference.GetScene() if not _is_file(reference) else mrml.slicer.mrmlScene)
    reference_node = _load(reference, scene) if _is_file(reference) else reference
    volumes = [v for v in volumes if v is not reference_node]
    ids = unique_ids([stem(str(v)) if _is_file(v) else v.GetName() for v in volumes])
    out = Path(out)
    with store.BatchLock(out):
        store.sweep_partials(out)
        reference_digest = _digest(reference)
        stopped = False
        for k, (item, pair_id) in enumerate(zip(volumes, ids)):
            digest = store.input_hash({"fixed": reference_digest, "moving": _digest(item)}, settings)
            if store.is_complete(out, pair_id, digest):
                result.skipped.append(pair_id)
                continue
            share = progress.sub(k / len(volumes), (k + 1) / len(volumes))
            made = {}

            def work(folder, pair_progress, log, item=item, pair_id=pair_id, share=share, made=made):
                log(f"pair {pair_id}: {method} {settings['options']} ({item if _is_file(item) else item.GetName()!r} "
                    f"to {reference_node.GetName()!r})")

                def report(fraction, message):
                    pair_progress(fraction, message)
                    share(fraction, f"{pair_id}: {message}")

                made["loaded"] = _load(item, scene) if _is_file(item) else None
                nodes = process(reference_node, made["loaded"] or item, method=method, device=device,
                                options=dict(options), progress=report)
                made["nodes"] = nodes
                for node in _made_nodes(nodes):
                    if hasattr(node, "SetAttribute"):
                        node.SetAttribute(OUTPUT_ATTRIBUTE, pair_id)
                return {**record_result(nodes["result"], folder), "device": nodes["result"].report.get("device")}

            status = attempt(out, pair_id, {"hash": digest, "method": method, "options": settings["options"],
                                            "files": {"fixed": str(reference) if _is_file(reference)
                                                      else reference_node.GetName(),
                                                      "moving": str(item) if _is_file(item) else item.GetName()}},
                             work, progress.should_cancel)
            if _is_file(item):
                _remove(scene, [*_made_nodes(made.get("nodes", {})), made.get("loaded")])
            if status["status"] == "cancelled":
                stopped = True
                break
            (result.done if status["status"] == "done" else result.failed).append(pair_id)
        result.not_run = [i for i in ids if i not in result.done + result.failed + result.skipped]
        result.report = write_report(out, ids, title or f"Slicer batch ({method}) to {reference_node.GetName()}")
        if _is_file(reference):
            _remove(scene, [reference_node])
    result.seconds = time.perf_counter() - t0
    if stopped:
        raise Cancelled(f"batch cancelled: {len(result.done)} volumes registered, {len(result.not_run)} not run")
    progress(1.0, f"{len(result.done)} registered, {len(result.skipped)} already complete, "
                  f"{len(result.failed)} failed")
    return result


def scene_volumes(scene, reference=None) -> list:
    """The scalar volume nodes of ``scene`` a batch registers: not label maps, not the reference, and not
    the nodes an earlier batch added."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    out = []
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if (node is not reference and not node.IsA("vtkMRMLLabelMapVolumeNode")
                and not node.GetAttribute(OUTPUT_ATTRIBUTE)):
            out.append(node)
    return out
