"""``deepregistration data`` (fetch and list the sample data) and ``gradient-magnitude``."""
from __future__ import annotations

from ..core.io import read_image, write_image
from ..data import sources
from ..data.synthetic import GRADIENT_MAGNITUDE_SIGMA_MM, gradient_magnitude


def add_command(sub) -> None:
    p = sub.add_parser("data", help="fetch the built-in sample data into the cache and list it")
    p.set_defaults(func=run_data)
    g = sub.add_parser("gradient-magnitude", help="make the gradient-magnitude modality of an image",
                       description="|grad(G_sigma * I)| with a recursive Gaussian of sigma in mm: the T1<->GM "
                                   "modality of Sedghi et al. (experiment 3). Apply a T1<->GM metric only to "
                                   "images made this way.")
    g.add_argument("input")
    g.add_argument("output")
    g.add_argument("--sigma-mm", type=float, default=GRADIENT_MAGNITUDE_SIGMA_MM)
    g.set_defaults(func=run_gradient_magnitude)


def run_data(args) -> int:
    print(f"cache: {sources.cache_dir()}")
    for name, load in (("SPM avg152 T1/T2/PD", lambda: [sources.spm_avg152(m) for m in ("T1", "T2", "PD")]),
                       ("SPM single-subject T1 (Colin27)", lambda: [sources.spm_single_subject_t1()]),
                       ("ICBM152 2009a T1/GM/WM", lambda: [sources.icbm152(k) for k in ("t1", "gm", "wm")])):
        images = load()
        print(f"  {name}: {len(images)} volumes, size {images[0].grid.size}, spacing {images[0].grid.spacing.tolist()} mm")
    for name, load in (("ITK KmeansTest T1 + segmentation", sources.itk_brain_t1), ("Colin27 + AAL", sources.colin27)):
        try:
            load()
            print(f"  {name}: available")
        except Exception as err:  # noqa: BLE001 - optional sources: say why they are missing
            print(f"  {name}: not available ({err})")
    return 0


def run_gradient_magnitude(args) -> int:
    image = read_image(args.input, "input image")
    write_image(gradient_magnitude(image, args.sigma_mm), args.output)
    print(f"gradient magnitude (sigma {args.sigma_mm} mm) written to {args.output}")
    return 0
