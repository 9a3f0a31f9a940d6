"""``deepregistration train-dirnet``: train a DIRNet (de Vos et al. 2017) by unsupervised NCC."""
from __future__ import annotations

from ..core.errors import InputError
from ..data.corpus_pairs import MODES
from ..networks.dirnet_regressor import POOLINGS, VARIANTS, DIRNetConfig
from ..training.dirnet_trainer import DIRNetTraining, VolumePairs, train
from .training_args import (add_data_sources, add_deformation_options, add_run_options, command_line, numbers,
                            report_written)

TEMPLATE_SOURCE = "spm-avg152-t1"


def add_command(sub) -> None:
    d = DIRNetTraining()
    c = DIRNetConfig()
    p = sub.add_parser("train-dirnet", help="train a DIRNet (B-spline ConvNet registration) by unsupervised NCC",
                       description="Train DIRNet (de Vos et al. 2017) end to end: ConvNet regressor -> B-spline "
                                   "transformer -> resampler, loss = -NCC, Adam, mini-batches of 32. Defaults are "
                                   "the paper's values where it gives them (16 kernels, 4 conv layers, 4 average "
                                   "poolings, cubic B-spline, batch 32, >= 10,000 iterations = 100 epochs x 100 steps).")
    add_data_sources(
        p, pairs="CSV with header fixed,moving (images resampled to the model grid)",
        synthetic=([TEMPLATE_SOURCE], "draw pairs from the SPM avg152 T1 template under random deformations "
                                      "(bundled models)"),
        corpus=(MODES, "synthetic subject pairs of the subject corpus: a pool of --corpus-pairs pairs of its train "
                       "split for training and of its validation split for validation (synthmorph: images "
                       "synthesized from label maps; images: real images deformed; mixed: both)"))
    p.add_argument("--corpus-pairs", type=int, default=d.corpus_pairs,
                   help="with --corpus: synthetic pairs drawn once per split (default %(default)s)")
    add_run_options(p, seed=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help=f"iterations per epoch (default {d.steps_per_epoch})")
    p.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2D (slices) or 3D model (default 2)")
    p.add_argument("--size", default=",".join(map(str, d.size_xyz)),
                   help="model input size, x-first, divisible by 2^downsamplings (default %(default)s)")
    p.add_argument("--spacing-mm", default=",".join(map(str, d.spacing_mm)),
                   help="model voxel spacing in mm, x-first (default %(default)s)")
    p.add_argument("--variant", choices=list(VARIANTS), default="BL",
                   help="Table 1 variant: BL baseline, A1 max pooling, A2 strided convolutions, B1 quadratic "
                        "B-spline, C1 overlapping receptive field (default BL)")
    p.add_argument("--channels", type=int, default=c.channels, help=f"kernels per layer (paper: {c.channels})")
    p.add_argument("--conv-layers", type=int, default=c.conv_layers, help=f"3x3 conv layers (paper: {c.conv_layers})")
    p.add_argument("--downsamplings", type=int, default=c.downsamplings,
                   help=f"downsampling layers; control spacing 2^n voxels (paper: {c.downsamplings})")
    p.add_argument("--pooling", choices=POOLINGS, help="override the variant's downsampling")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"pairs per mini-batch (paper: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.learning_rate,
                   help=f"Adam learning rate (the paper gives none; default {d.learning_rate}, Adam's usual value)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    add_deformation_options(p, d, "augmentation")
    p.add_argument("--no-augment", action="store_true",
                   help="with --pairs: use the pairs as they are (no random deformations, gamma or noise)")
    p.set_defaults(func=run)


def settings_from_args(args) -> DIRNetTraining:
    size, spacing = numbers(args.size, int), numbers(args.spacing_mm)
    if len(size) != args.dim or len(spacing) != args.dim:
        raise InputError(f"--size and --spacing-mm need {args.dim} values for a {args.dim}D model")
    options = {"ndim": args.dim, "channels": args.channels, "conv_layers": args.conv_layers,
               "downsamplings": args.downsamplings}
    try:
        config = DIRNetConfig.variant(args.variant, **options)
        if args.pooling:
            config = DIRNetConfig(**{**config.to_dict(), "pooling": args.pooling})
        config.control_shape(tuple(reversed(size)))
    except ValueError as err:
        raise InputError(str(err)) from None
    if args.corpus_pairs < 1:
        raise InputError("--corpus-pairs must be at least 1")
    if args.no_augment and args.synthetic:
        raise InputError("--no-augment would train on identical pairs of the template; use it with --pairs")
    return DIRNetTraining(config=config, size_xyz=size, spacing_mm=spacing, batch_size=args.batch_size,
                         learning_rate=args.lr, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                         checkpoint_every=args.checkpoint_every, deform_max_mm=args.deform_max_mm,
                         deform_spacing_mm=args.deform_spacing_mm, augment=not args.no_augment,
                         corpus=args.corpus or "", corpus_pairs=args.corpus_pairs, seed=args.seed)


def run(args) -> int:
    settings = settings_from_args(args)
    validation = None
    if args.corpus:
        data, validation = (VolumePairs.from_corpus(settings, split, settings.corpus_pairs)
                            for split in ("train", "validation"))
    elif args.synthetic:
        data = VolumePairs.from_template(settings)
    else:
        data = VolumePairs.from_csv(args.pairs, settings)
    out = train(settings, data, args.out, args.checkpoint_dir, args.resume, args.device, args.progress_json,
                command_line(), validation)
    report_written(args, "DIRNet model", out)
    return 0
