"""``deepregistration train-diffeo``: train the momentum U-Net of the patch-wise diffeomorphic method."""
from __future__ import annotations

from ..core.errors import InputError
from ..metrics.deepsim_similarity import load_deepsim
from ..networks.momentum_unet import MomentumUNetConfig
from ..data.corpus_pairs import MODES
from ..training.diffeo_trainer import SIMILARITIES, TEMPLATES, DiffeoTraining, PairSource, train
from .training_args import (add_data_sources, add_deformation_options, add_run_options, command_line,
                            report_written, require_at_least_one)

DEEPSIM = "deepsim"


def add_command(sub) -> None:
    d = DiffeoTraining()
    c = MomentumUNetConfig()
    p = sub.add_parser("train-diffeo", help="train the momentum U-Net (patch-wise diffeomorphic LDDMM registration)",
                       description="Unsupervised patch-wise training of the momentum U-Net (thesis ch. 3-4): loss "
                                   "E = w<v,m> + 1/2 eps(I1 o phi^-1, I2) + 1/2 eps(I2 o phi, I1) (eq. 3.2), v = K^-1 * m "
                                   "(L = alpha Lap + gamma Id, K = L^2, FFT with zero padding), phi = exp(v) by "
                                   "scaling and squaring. Defaults are the thesis' values: 48^3 patches, batch 12, "
                                   "4 volumes at a time, w = 1e-4, alpha = 20, gamma = 1, padding 12, N = 7, "
                                   "normalized MSE a = 0.2.")
    add_data_sources(
        p, pairs="CSV with header fixed,moving (images resampled to --spacing-mm)",
        synthetic=(TEMPLATES, "subjects made from this template by random diffeomorphisms: the SPM avg152 T1 (an "
                              "average of 152 brains) or SPM's single-subject T1 (Colin27, sharper); the bundled "
                              "model was trained on the first, then fine-tuned on the second (Colin27 is a test "
                              "subject of the corpus: models trained on it are not evaluated fairly on Colin27)"),
        corpus=(MODES, "synthetic subjects of the subject corpus: its train split for training, its validation "
                       "split for validation (synthmorph: images synthesized from label maps; images: real "
                       "images deformed; mixed: both)"))
    add_run_options(p, seed=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs}; the thesis used epoch 12)")
    p.add_argument("--groups-per-epoch", type=int, default=d.groups_per_epoch,
                   help=f"groups of --volumes-at-once pairs per epoch (default {d.groups_per_epoch})")
    p.add_argument("--similarity", choices=list(SIMILARITIES) + [DEEPSIM], default=d.similarity,
                   help="epsilon of eq. 3.2: mse, nmse (eq. 3.5, a = 0.2), lncc, or deepsim (1 - DeepSim of "
                        "Czolbe et al. 2021 with the --features extractor) (default %(default)s)")
    p.add_argument("--features", help="with --similarity deepsim: a 3D DeepSim feature extractor (bundled name or "
                                      "file) trained at --spacing-mm")
    p.add_argument("--reg-weight", type=float, default=d.reg_weight, help="w of eq. 3.2 (thesis: 1e-4)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="kernel alpha (thesis: 20)")
    p.add_argument("--gamma", type=float, default=d.gamma, help="kernel gamma (thesis: 1)")
    p.add_argument("--fft-padding", type=int, default=d.padding, help="zero padding before the FFT (thesis: 12)")
    p.add_argument("--integration-steps", type=int, default=d.steps, help="scaling and squaring steps (thesis: 7)")
    p.add_argument("--patch-size", type=int, default=d.patch_size, help="training patch side in voxels (thesis: 48)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="patches per batch (thesis: 12)")
    p.add_argument("--volumes-at-once", type=int, default=d.volumes_at_once,
                   help="volume pairs the patches of a group come from (thesis: 4)")
    p.add_argument("--patches-per-volume", type=int, default=d.patches_per_volume,
                   help=f"random patches drawn from each volume of a group (default {d.patches_per_volume})")
    p.add_argument("--spacing-mm", type=float, default=d.spacing_mm,
                   help=f"isotropic model spacing (default {d.spacing_mm}; the thesis worked at ~0.7x0.7x1 mm)")
    p.add_argument("--channels", type=int, default=c.channels, help=f"U-Net base channels (default {c.channels})")
    p.add_argument("--dropout", type=float, default=c.dropout,
                   help=f"dropout after the down-sampling steps and the first concatenation (default {c.dropout})")
    p.add_argument("--lr", type=float, default=d.learning_rate,
                   help=f"Adam learning rate (the thesis gives none; default {d.learning_rate})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="steps with a lower regularization weight at the start (thesis: needed for MSE; default 0)")
    p.add_argument("--warmup-factor", type=float, default=d.warmup_factor,
                   help=f"regularization weight factor during warm-up (default {d.warmup_factor})")
    add_deformation_options(p, d, "subject deformations", "velocity coefficient")
    p.add_argument("--subject-pool", type=int, default=d.subject_pool,
                   help="draw this many synthetic subjects once and pair them at random (0: new subjects for every "
                        "pair; a pool makes CPU training faster); validation subjects are always new")
    p.add_argument("--validation-pairs", type=int, default=d.validation_pairs,
                   help=f"validation volume pairs (--patches-per-volume patches each; default {d.validation_pairs}); "
                        "the model file keeps the weights of the epoch with the lowest validation loss")
    p.add_argument("--init-model", help="start from the weights of this diffeo model (bundled name or file; same "
                                        "architecture, spacing and LDDMM parameters) to fine-tune it, e.g. on "
                                        "your own pairs; its provenance goes into the new model's metadata")
    p.add_argument("--no-augment", action="store_true", help="with --pairs: use the pairs as they are")
    p.set_defaults(func=run)


def settings_from_args(args) -> DiffeoTraining:
    if args.patch_size % 4:
        raise InputError(f"--patch-size {args.patch_size} must be a multiple of 4 (two down-sampling steps)")
    if args.no_augment and (args.synthetic or args.corpus):
        raise InputError("--no-augment would train on identical copies of the template; use it with --pairs")
    require_at_least_one(args, ("epochs", "groups_per_epoch", "batch_size", "volumes_at_once", "patches_per_volume",
                                "channels", "validation_pairs"))
    return DiffeoTraining(
        config=MomentumUNetConfig(channels=args.channels, dropout=args.dropout), similarity=args.similarity,
        reg_weight=args.reg_weight, alpha=args.alpha, gamma=args.gamma, padding=args.fft_padding,
        steps=args.integration_steps, patch_size=args.patch_size, batch_size=args.batch_size,
        volumes_at_once=args.volumes_at_once, patches_per_volume=args.patches_per_volume, spacing_mm=args.spacing_mm,
        learning_rate=args.lr, epochs=args.epochs, groups_per_epoch=args.groups_per_epoch,
        warmup_steps=args.warmup_steps, warmup_factor=args.warmup_factor, deform_max_mm=args.deform_max_mm,
        deform_spacing_mm=args.deform_spacing_mm, subject_pool=args.subject_pool,
        validation_pairs=args.validation_pairs, augment=not args.no_augment,
        features=args.features or "", init_model=args.init_model or "", corpus=args.corpus or "", seed=args.seed)


def deepsim_similarity(settings: DiffeoTraining):
    """DeepSim as ε of eq. 3.2: its extractor must be 3D, at the model spacing, and fit the patch size."""
    if not settings.features:
        raise InputError("--similarity deepsim needs --features (a model from train-deepsim-features)")
    deepsim = load_deepsim(settings.features)
    spacing = [float(s) for s in deepsim.metadata["spacing_mm"]]
    if deepsim.ndim != 3 or spacing != [settings.spacing_mm] * 3:
        raise InputError(f"feature extractor {settings.features!r} is {deepsim.ndim}D at {spacing} mm; the momentum "
                         f"model trains in 3D at {settings.spacing_mm} mm: give --spacing-mm {spacing[0]} or another "
                         "extractor")
    if settings.patch_size % deepsim.extractor.config.divisor:
        raise InputError(f"--patch-size {settings.patch_size} must be a multiple of {deepsim.extractor.config.divisor} "
                         "for this feature extractor")
    return deepsim


def run(args) -> int:
    settings = settings_from_args(args)
    validation = None
    if args.corpus:
        data, validation = (PairSource.from_corpus(settings, args.corpus, split) for split in ("train", "validation"))
    elif args.synthetic:
        data = PairSource.from_template(settings, args.synthetic)
    else:
        data = PairSource.from_csv(args.pairs, settings)
    similarity = deepsim_similarity(settings) if settings.similarity == DEEPSIM else None
    out = train(settings, data, args.out, args.checkpoint_dir, args.resume, args.device, args.progress_json,
                command_line(), similarity, validation)
    report_written(args, "diffeomorphic momentum model", out)
    return 0
