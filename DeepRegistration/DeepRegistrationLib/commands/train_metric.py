"""``deepregistration train-metric``: learn a multimodal metric from roughly aligned pairs (Sedghi et al. 2018)."""
from __future__ import annotations

import signal

import torch

from ..core.errors import InputError
from ..training.common import distributed, read_pairs_csv
from ..data.corpus_pairs import METRIC_CASE_SPACING_MM, METRIC_TASKS, corpus_metric_cases, metric_provenance
from ..training.metric_trainer import (SELECTIONS, MetricTrainer, MetricTrainingConfig, PairData, load_pairs,
                                       parse_stages)
from .training_args import add_data_sources, add_run_options, numbers, require_at_least_one

PAPER = "(paper's value)"


def add_command(sub) -> None:
    d = MetricTrainingConfig()
    p = sub.add_parser(
        "train-metric", help="train a CNN similarity metric from roughly aligned image pairs",
        description="Train the 2-channel 3D CNN metric of Sedghi et al. 2018 on (fixed, moving) pairs that are only "
                    "roughly aligned, in multi-resolution multi-shot stages F(l, sigma^2): after each stage the pairs "
                    "are re-registered with that stage's metric (transforms in CHECKPOINT_DIR/realignment.csv). "
                    "The output is one model file holding every stage (use it with register --method cnn --model). "
                    "Runs under torchrun (DistributedDataParallel; gloo on the CPU).")
    add_data_sources(
        p, pairs="CSV with header fixed,moving[,fixed_mask,moving_mask]",
        corpus=(METRIC_TASKS, "train on cases of the subject corpus for this task "
                              "(data.corpus_pairs.corpus_metric_case: whole heads, random contrasts, bias fields, "
                              "noise, fields of view): --cases misregistered cases of its train split, and model "
                              "selection by registration error on --validation-cases aligned cases of its "
                              "validation split"))
    p.add_argument("--cases", type=int, default=12, help="with --corpus: training cases (default %(default)s)")
    p.add_argument("--validation-cases", type=int, default=2,
                   help="with --corpus: validation-split cases for model selection (default %(default)s)")
    p.add_argument("--corpus-spacing-mm", type=float, default=METRIC_CASE_SPACING_MM,
                   help="with --corpus: spacing the cases are made at (default %(default)s)")
    p.add_argument("--init-model", default="",
                   help="start stage k from stage k of this metric set (bundled name or file; same stages and "
                        "architecture) to fine-tune it")
    add_run_options(p, seed=d.seed, out="metric-set model file to write (.pt)",
                    checkpoints="atomic checkpoints and realignment records (default: next to --out)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per stage (default {d.epochs})")
    p.add_argument("--stages", default=",".join(f"{a:g}:{b:g}" for a, b in d.stages),
                   help="level:dither-variance(mm^2) per stage (default 4:100,2:25,2:15,1:8 " + PAPER + ")")
    p.add_argument("--base-spacing-mm", type=float, default=d.base_spacing_mm,
                   help="spacing of level 1 (default 1 mm " + PAPER + ")")
    p.add_argument("--patch-size", type=int, default=d.patch_size,
                   help="patch edge in voxels (default 17 " + PAPER + ")")
    p.add_argument("--channels", default=",".join(map(str, d.channels)),
                   help="widths of the 3 conv layers (default 16,32,32; not given in the paper)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="default 0.5 " + PAPER)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam, default 0.01 " + PAPER)
    p.add_argument("--lr-decay", type=float, default=d.lr_decay, help="per epoch, default 0.8 " + PAPER)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2, default 0.01 " + PAPER)
    p.add_argument("--pairs-per-epoch", type=int, default=d.pairs_per_epoch,
                   help="patch pairs per epoch (default 100000: 10 epochs give the paper's 1 million per stage)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default 64)")
    p.add_argument("--dithers", type=int, default=d.dithers_per_location,
                   help="dither draws m per location (default 100 " + PAPER + ")")
    p.add_argument("--min-negative-distance-mm", type=float, default=None,
                   help="minimum distance of a negative pair's patch centres (default half the patch extent)")
    p.add_argument("--no-symmetrize", action="store_true", help="no random cube rotations/flips (paper: on)")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    p.add_argument("--validation-pairs", type=int, default=d.validation_pairs,
                   help="patch pairs in the fixed validation set (patch accuracy, reported every epoch)")
    p.add_argument("--selection", choices=list(SELECTIONS), default=d.selection,
                   help="model selection (§3): 'registration' keeps the epoch whose metric registers perturbed "
                        "starts of the validation pairs back best; 'accuracy' the best patch accuracy "
                        "(default %(default)s)")
    p.add_argument("--selection-starts", type=int, default=d.selection_starts,
                   help="perturbed starts per validation pair for --selection registration (default %(default)s)")
    p.add_argument("--realign-patches", type=int, default=d.realign_patches, help="n of eq. 2 for re-registration")
    p.add_argument("--realign-evaluations", type=int, default=d.realign_evaluations,
                   help="Powell evaluations per pair and stage for re-registration")
    p.add_argument("--no-final-realign", action="store_true",
                   help="skip re-registering the pairs with the last stage (only recorded, not trained on)")
    p.add_argument("--description", default="", help="training data description stored in the model metadata")
    p.set_defaults(func=run)


def config_from_args(args) -> MetricTrainingConfig:
    channels = numbers(args.channels, int)
    require_at_least_one(args, ("epochs", "patch_size", "pairs_per_epoch", "batch_size", "dithers", "validation_pairs"))
    if args.patch_size < 5:
        raise InputError("--patch-size must be at least 5 voxels")
    return MetricTrainingConfig(
        stages=parse_stages(args.stages), base_spacing_mm=args.base_spacing_mm, patch_size=args.patch_size,
        channels=channels, dropout=args.dropout, learning_rate=args.learning_rate, lr_decay=args.lr_decay,
        weight_decay=args.weight_decay, epochs=args.epochs, pairs_per_epoch=args.pairs_per_epoch,
        batch_size=args.batch_size, dithers_per_location=args.dithers,
        min_negative_distance_mm=args.min_negative_distance_mm, symmetrize=not args.no_symmetrize,
        validation_fraction=args.validation_fraction, validation_pairs=args.validation_pairs,
        realign_patches=args.realign_patches, realign_evaluations=args.realign_evaluations,
        selection=args.selection, selection_starts=args.selection_starts,
        realign_after_last_stage=not args.no_final_realign, seed=args.seed, init_model=args.init_model,
        description=args.description, command=command_line(args))


def command_line(args) -> str:
    """The parsed command, for the model's provenance record."""
    options = {k: v for k, v in sorted(vars(args).items()) if k not in ("func", "command")}
    return "deepregistration train-metric " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in options.items())


def _terminate(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    config = config_from_args(args)
    validation, record = None, None
    if args.corpus:
        if args.cases < 1 or args.validation_cases < 1:
            raise InputError("--cases and --validation-cases must be at least 1")
        if args.selection != "registration":
            raise InputError("--corpus selects by registration error on validation subjects: leave --selection at "
                             "'registration'")
        pairs, validation = ([PairData(fixed, moving, name=name)
                              for name, fixed, moving, _ in corpus_metric_cases(
                                  split, args.corpus, n, args.seed, misregister=split == "train",
                                  spacing_mm=args.corpus_spacing_mm)]
                             for split, n in (("train", args.cases), ("validation", args.validation_cases)))
        record = metric_provenance(args.corpus, args.cases, args.validation_cases, args.seed,
                                   spacing_mm=args.corpus_spacing_mm)
    else:
        pairs = load_pairs(read_pairs_csv(args.pairs))
    signal.signal(signal.SIGTERM, _terminate)
    with distributed(args.device) as d:
        if d.device.type == "cpu" and d.enabled:
            torch.set_num_threads(1)
        trainer = MetricTrainer(pairs, config, args.out, args.checkpoint_dir, d, args.progress_json,
                                validation_pairs=validation, corpus_record=record)
        trainer.train(args.resume)
    return 0
