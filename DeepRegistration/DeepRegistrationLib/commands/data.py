"""``deepregistration data`` (fetch and list the sample data) and ``gradient-magnitude``."""
from __future__ import annotations

from ..core.io import read_image, write_image
from ..data import corpus, sources
from ..data.synthetic import GRADIENT_MAGNITUDE_SIGMA_MM, gradient_magnitude


def add_command(sub) -> None:
    p = sub.add_parser("data", help="fetch the subject corpus (offline sample data) into the cache and list it "
                                    "with its train/validation/test split")
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
    """Fetch every subject of the corpus (images and label maps) and list it with its split."""
    print(f"cache: {sources.cache_dir()}")
    for s in corpus.SUBJECTS:
        try:
            images = [corpus.load_image(s.id, name) for name in s.images]
            labels = [corpus.load_labels(s.id, name) for name in s.labels]
            grids = ", ".join(f"{n} {i.grid.size} at {[round(float(x), 2) for x in i.grid.spacing]} mm"
                              for n, i in zip(list(s.images) + list(s.labels), images + labels))
            print(f"  {s.split:10s} {s.id}: {grids}")
        except Exception as err:  # noqa: BLE001 - a source that cannot be fetched here: say why
            print(f"  {s.split:10s} {s.id}: not available ({err})")
    return 0


def run_gradient_magnitude(args) -> int:
    image = read_image(args.input, "input image")
    write_image(gradient_magnitude(image, args.sigma_mm), args.output)
    print(f"gradient magnitude (sigma {args.sigma_mm} mm) written to {args.output}")
    return 0
