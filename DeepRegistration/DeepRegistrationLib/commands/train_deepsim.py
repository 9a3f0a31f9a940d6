"""``deepregistration train-deepsim-features`` and ``train-deepsim``: DeepSim's two training stages.

Stage 1 trains the feature extractor on segmentation, stage 2 the registration U-Net with DeepSim (or
the MSE/NCC/NCC_sup baselines) and λ tuned on validation data (Czolbe et al. 2021). The paper gives no
numeric training settings; every default here is ours and ``--help`` says so.
"""
from __future__ import annotations

from ..core.errors import InputError
from ..networks.deepsim_unet import feature_config, registration_config
from ..training.deepsim_trainer import DEFAULT_LAMBDA, FeatureTraining, RegistrationTraining, train_features, train_registration
from ..training.deepsim_data import VolumeSet
from ..training.deepsim_losses import SIMILARITIES
from ..data.corpus_pairs import MODES, CorpusPairs, TemplateSubjectSettings, icbm_template, isotropic_grid
from .training_args import add_data_sources, add_run_options, command_line, numbers, report_written

TEMPLATE_SOURCE = "icbm152"
#: model geometry per dimension when none is given: (size x-first, spacing mm)
DEFAULT_GEOMETRY = {3: ((40, 48, 40), (4.0, 4.0, 4.0)), 2: ((80, 96), (2.0, 2.0))}
#: height (mm) of the brain-centred volumes 2D subjects are sliced from
SLAB_HEIGHT_MM = 160.0


def _add_common(p, epochs: int, steps: int) -> None:
    add_data_sources(
        p, pairs="CSV with header fixed,moving[,fixed_labels,moving_labels]; images resampled to the model spacing "
                 "(every fifth row is kept apart for validation)",
        synthetic=([TEMPLATE_SOURCE], "subjects made from the ICBM 2009a template and its GM/WM maps (the bundled "
                                      "models)"),
        corpus=(MODES, "synthetic subjects of the subject corpus with tissue labels: the train split for training, "
                       "the validation split for validation and λ selection (synthmorph: images synthesized "
                       "from label maps; images: real images deformed; mixed: both)"))
    add_run_options(p)
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs (default {epochs}; ours, the paper gives none)")
    p.add_argument("--steps-per-epoch", type=int, default=steps, help=f"iterations per epoch (default {steps})")
    p.add_argument("--checkpoint-every", type=int, default=20, help="steps between checkpoints (default 20)")
    p.add_argument("--dim", type=int, choices=(2, 3), default=3, help="2D (axial slices) or 3D model (default 3)")
    p.add_argument("--size", help="training crop size, x-first (default 40,48,40 in 3D, 80,96 in 2D)")
    p.add_argument("--spacing-mm", help="model voxel spacing in mm, x-first (default 4 mm in 3D, 2 mm in 2D)")
    p.add_argument("--batch-size", type=int, default=4, help="images or pairs per mini-batch (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--train-subjects", type=int, default=16, help="with --synthetic or --corpus: training subjects (default 16)")
    p.add_argument("--val-subjects", type=int, default=4, help="with --synthetic or --corpus: validation subjects (default 4)")


def add_command(sub) -> None:
    f = sub.add_parser("train-deepsim-features", help="DeepSim stage 1: train the feature extractor on segmentation",
                       description="Train the U-Net whose frozen encoder features define DeepSim (Czolbe et al. "
                                   "2021, Fig. 1) on a segmentation task (cross-entropy, Adam). The paper gives no "
                                   "training settings: the defaults are ours, sized for minutes on a CPU.")
    _add_common(f, 10, 20)
    f.add_argument("--channels", default="8,16,32", help="U-Net widths per level (default %(default)s)")
    f.add_argument("--noise-std", type=float, default=FeatureTraining.noise_std,
                   help="augmentation: Gaussian noise of σ ~ U[0, this] on the inputs (default %(default)s)")
    f.set_defaults(func=run_features)

    r = sub.add_parser("train-deepsim", help="DeepSim stage 2: train a registration U-Net with DeepSim (or MSE/NCC)",
                       description="Train a VoxelMorph-style registration U-Net with a spatial transformer on "
                                   "eq. 1 of Czolbe et al. 2021: D(I∘Φ, J) + λ‖∇u‖². D is 1 − DeepSim with a frozen "
                                   "feature extractor (--features), or a baseline: mse, ncc (local, 9 voxels), "
                                   "ncc_sup (ncc + Dice of warped label maps). Several --lam values are tuned on the "
                                   "validation Dice (the paper's protocol). Training defaults are ours (the paper "
                                   "gives none).")
    _add_common(r, 10, 20)
    r.add_argument("--similarity", choices=SIMILARITIES, default="deepsim", help="D of eq. 1 (default deepsim)")
    r.add_argument("--features", help="feature-extractor model (bundled name or file) for --similarity deepsim")
    r.add_argument("--lam", help="λ of eq. 1, or comma-separated candidates tuned on validation Dice (default: "
                                 + ", ".join(f"{k} {v}" for k, v in DEFAULT_LAMBDA.items()) + ")")
    r.add_argument("--channels", default="8,16,16,32", help="U-Net widths per level (default %(default)s)")
    r.add_argument("--sup-weight", type=float, default=1.0, help="ncc_sup: weight of the Dice term (default 1)")
    r.add_argument("--validation-pairs", type=int, default=8, help="validation pairs (default 8)")
    r.set_defaults(func=run_registration)


def _geometry(args) -> tuple:
    size, spacing = DEFAULT_GEOMETRY[args.dim]
    size = numbers(args.size, int) if args.size else size
    spacing = numbers(args.spacing_mm) if args.spacing_mm else spacing
    if len(size) != args.dim or len(spacing) != args.dim:
        raise InputError(f"--size and --spacing-mm need {args.dim} values for a {args.dim}D model")
    return size, spacing


def _data(args, size, spacing, divisor: int) -> tuple:
    if args.pairs:
        return VolumeSet.from_csv(args.pairs, args.dim, size, spacing, divisor)
    if len(set(spacing)) != 1:
        raise InputError("--synthetic and --corpus subjects are made on an isotropic grid: give one spacing for "
                         "every axis")
    if args.train_subjects < 2 or args.val_subjects < 2:
        raise InputError("--train-subjects and --val-subjects must be at least 2 (pairs of distinct subjects)")
    if args.corpus:
        grid_of = isotropic_grid(spacing[0])
        sources = [CorpusPairs(split, args.corpus, grid_of, need_tissue=True) for split in ("train", "validation")]
        return tuple(VolumeSet.from_corpus(source, count, args.dim, size, args.seed)
                     for source, count in zip(sources, (args.train_subjects, args.val_subjects)))
    base_size = size if args.dim == 3 else tuple(size) + (int(round(SLAB_HEIGHT_MM / spacing[0])),)
    subject = TemplateSubjectSettings(size_xyz=base_size, spacing_mm=spacing[0])
    base = icbm_template(subject)
    return (VolumeSet.from_subjects("train", args.train_subjects, subject, args.dim, size, args.seed, base),
            VolumeSet.from_subjects("val", args.val_subjects, subject, args.dim, size, args.seed, base))


def _train(args, settings, config, train, what: str) -> int:
    """Check the network ``config()`` fits the settings, gather the data, train, and say where the model went."""
    try:
        divisor = config().divisor
    except ValueError as err:
        raise InputError(str(err)) from None
    data, validation = _data(args, settings.size_xyz, settings.spacing_mm, divisor)
    out = train(settings, data, validation, args.out, args.checkpoint_dir, args.resume, args.device,
                args.progress_json, command_line())
    report_written(args, what, out)
    return 0


def run_features(args) -> int:
    size, spacing = _geometry(args)
    settings = FeatureTraining(ndim=args.dim, channels=numbers(args.channels, int), size_xyz=size, spacing_mm=spacing,
                               batch_size=args.batch_size, learning_rate=args.lr, noise_std=args.noise_std,
                               epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                               checkpoint_every=args.checkpoint_every, seed=args.seed)
    return _train(args, settings, lambda: feature_config(args.dim, len(settings.classes), settings.channels),
                  train_features, "DeepSim feature extractor")


def run_registration(args) -> int:
    size, spacing = _geometry(args)
    lambdas = numbers(args.lam) if args.lam else (DEFAULT_LAMBDA[args.similarity],)
    if min(lambdas) < 0:
        raise InputError(f"--lam must be >= 0, got {args.lam}")
    settings = RegistrationTraining(ndim=args.dim, channels=numbers(args.channels, int), similarity=args.similarity,
                                    lambdas=lambdas, size_xyz=size, spacing_mm=spacing, batch_size=args.batch_size,
                                    learning_rate=args.lr, sup_weight=args.sup_weight, epochs=args.epochs,
                                    steps_per_epoch=args.steps_per_epoch, checkpoint_every=args.checkpoint_every,
                                    validation_pairs=args.validation_pairs, features=args.features or "",
                                    seed=args.seed)
    return _train(args, settings, lambda: registration_config(args.dim, settings.channels), train_registration,
                  f"DeepSim registration model ({args.similarity})")
