"""Register every volume of a Slicer scene, or of a folder, to a reference through the Deep Registration
module logic, and write the batch QA report (the same folders and report as ``deepregistration batch``).

Headless, on a folder of images (each registered to the reference file; Slicer exits with 1 when a pair
failed):

    Slicer --no-main-window --python-script scripts/slicer_batch.py \\
        --reference /data/template.nii.gz --folder /data/subjects --out /data/qa --method nmi

In Slicer's Python console, on the volumes of the scene (the reference given by its node name):

    import sys; sys.path.append("/path/to/DeepRegistration/scripts")
    import slicer_batch
    slicer_batch.main(["--reference", "template", "--out", "/data/qa", "--method", "diffeo"])

A rerun with the same --out skips the pairs that are complete for the same volumes and settings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import slicer

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="slicer_batch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="reference (fixed) volume: a node name in the scene, or a file")
    p.add_argument("--folder", help="register every image file of this folder (default: the scene's volumes)")
    p.add_argument("--pattern", default="*", help="with --folder, only the files matching this pattern, e.g. '*_T1.nii.gz'")
    p.add_argument("--out", required=True, help="output folder of the batch and its report")
    p.add_argument("--method", default="nmi", help="registration method (as the module's method selector)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method option")
    p.add_argument("--model", help="model name or file for learned methods")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def image_files(folder, pattern: str = "*", reference=None) -> list:
    files = sorted(p for p in Path(folder).glob(pattern) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    return [p for p in files if reference is None or p.resolve() != Path(reference).resolve()]


def main(argv=None) -> int:
    """Run the batch; returns 0 when every pair registered, 1 when any failed."""
    from DeepRegistration import DeepRegistrationLogic
    from DeepRegistrationLib.batch.pairs import parse_params
    from DeepRegistrationLib.batch.scene import register_volumes, scene_volumes

    args = parse_args(argv)
    logic = DeepRegistrationLogic()

    def process(fixed, moving, method, device, options, progress):
        return logic.process(fixed, moving, method=method, device=device, model=args.model or "", options=options,
                             progress=progress)

    options = parse_params(";".join(args.param), "--param")
    if args.folder:
        reference = args.reference
        volumes = image_files(args.folder, args.pattern, reference if Path(reference).exists() else None)
    else:
        reference = slicer.mrmlScene.GetFirstNodeByName(args.reference)
        if reference is None:
            raise SystemExit(f"no volume named {args.reference!r} in the scene")
        volumes = scene_volumes(slicer.mrmlScene, reference)
    result = register_volumes(reference, volumes, args.out, args.method, options, process, args.device,
                              scene=slicer.mrmlScene)
    print(f"{len(result.done)} registered, {len(result.skipped)} already complete, {len(result.failed)} failed; "
          f"report: {result.report['html']}")
    return 0 if result.ok else 1


if __name__ == "__main__" and getattr(slicer, "app", None) is not None:
    status = main(sys.argv[1:])
    slicer.util.exit(status)
