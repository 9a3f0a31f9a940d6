"""Write the results tables of the README and the method pages from the benchmarks' results files.

A table lives between two markers in a Markdown file::

    <!-- table:NAME -->
    ...generated...
    <!-- /table -->

and is rendered by the function registered here under NAME from ``benchmarks/results/*.json`` (written by
the scripts under ``benchmarks/``; ``benchmarks/README.md`` says which). Each table ends with the results
file it comes from and the command, commit and date that made it. A re-run of a benchmark overwrites its
results file; then

    python scripts/readme_tables.py            # rewrite the tables in README.md and docs/*.md
    python scripts/readme_tables.py --check    # exit 1 where a table differs from its results file

(``tests/test_readme_tables.py`` runs the check). A table whose results file does not exist yet says so,
with the command that makes it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The files whose marked blocks are generated.
DOCUMENTS = ("README.md", "docs/rigid.md", "docs/learned-metric.md", "docs/diffeomorphic.md", "docs/dirnet.md",
             "docs/deepsim.md", "docs/rigid-robustness.md", "docs/instance-optimization.md")
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
#: How each results file is made (for the line a missing file leaves in its table).
COMMANDS = {
    "rigid_nmi_accuracy": "OMP_NUM_THREADS=1 python benchmarks/accuracy/rigid_nmi_accuracy.py --cases 20 --threads 1",
    "learned_metric_t1_t2": "python benchmarks/accuracy/learned_metric_accuracy.py --task t1-t2 --cases 8",
    "learned_metric_t1_gm": "python benchmarks/accuracy/learned_metric_accuracy.py --task t1-gm --cases 8",
    "diffeo_evaluation_bfloat16": "OMP_NUM_THREADS=1 python benchmarks/accuracy/diffeo_evaluation.py --pairs 2 "
                                  "--figure docs/figures/diffeo_momentum_marginals.png` on a CPU with bfloat16 "
                                  "instructions",
    "diffeo_evaluation_float32": "OMP_NUM_THREADS=1 python benchmarks/accuracy/diffeo_evaluation.py --pairs 2 "
                                 "--figure docs/figures/diffeo_momentum_marginals.png` on a CPU without bfloat16 "
                                 "instructions",
    "dirnet_vs_bspline": "OMP_NUM_THREADS=1 python benchmarks/accuracy/dirnet_vs_bspline.py --pairs-2d 20 "
                         "--pairs-3d 3 --figure docs/figures/dirnet_qualitative.png",
    "deepsim_comparison_2d": "OMP_NUM_THREADS=1 python benchmarks/accuracy/deepsim_comparison.py --dim 2 --work W "
                             "--evaluate --figures docs/figures (after training, see benchmarks/README.md)",
    "metric_corpus_t1_t2": "python benchmarks/accuracy/metric_corpus_evaluation.py --task t1-t2 --split test "
                           "--cases 4 --model sedghi-t1-t2",
    "metric_corpus_t1_gm": "python benchmarks/accuracy/metric_corpus_evaluation.py --task t1-gm --split test "
                           "--cases 4 --model sedghi-t1-gm",
    "rigid_evaluation": "OMP_NUM_THREADS=1 python benchmarks/accuracy/rigid_evaluation.py --split test --cases 5 --ants-cases 1",
    "deformable_evaluation": "OMP_NUM_THREADS=1 python benchmarks/accuracy/deformable_evaluation.py "
                             "--same-subject-pairs 1 --threads 1",
    "deepsim_comparison_3d": "OMP_NUM_THREADS=1 python benchmarks/accuracy/deepsim_comparison.py --dim 3 --work W "
                             "--evaluate --figures docs/figures (after training, see benchmarks/README.md)",
}


class Missing(Exception):
    """A results file that does not exist yet."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def load(results_dir: Path, name: str) -> dict:
    path = results_dir / f"{name}.json"
    if not path.exists():
        raise Missing(name)
    return json.loads(path.read_text())


def pm(stat, digits=2) -> str:
    """'mean ± sd' of a {"mean", "sd"} record."""
    if stat.get("sd") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def p_value(p) -> str:
    return "–" if p is None else f"{p:.2g}"


def source(record: dict, name: str) -> str:
    machine = record.get("machine", {})
    load_avg = machine.get("load_average_1min") or {}
    where = f"{machine.get('cpu', '?')} CPU, {machine.get('cpu_count', '?')} cores"
    if machine.get("gpu"):
        where += f", {machine['gpu']}"
    if load_avg:
        where += f", load average {load_avg.get('start')}–{load_avg.get('end')}: a shared machine"
    commit = (record.get("commit") or "?")[:10] + (" with uncommitted changes" if record.get("dirty") else "")
    return (f"Results file `benchmarks/results/{name}.json`, made by `{record['command']}` at commit {commit} "
            f"on {record['date'][:10]} ({where}).")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def missing_line(name: str) -> str:
    return f"No results file yet: `benchmarks/results/{name}.json` (made by `{COMMANDS.get(name, '?')}`)."


# ---------------------------------------------------------------------------------------------- tables

TABLES = {}


def table(name):
    def register(fn):
        TABLES[name] = fn
        return fn
    return register


RIGID_COLUMNS = (("t_norm_mm", "‖Δt‖ mm"), ("t_x_mm", "Δt_x"), ("t_y_mm", "Δt_y"), ("t_z_mm", "Δt_z"),
                 ("theta_x_deg", "Δθ_x °"), ("theta_y_deg", "Δθ_y °"), ("theta_z_deg", "Δθ_z °"))


@table("rigid-nmi")
def rigid_nmi(results_dir: Path) -> str:
    r = load(results_dir, "rigid_nmi_accuracy")
    lines = ["| task | method | " + " | ".join(c[1] for c in RIGID_COLUMNS) + " | ‖Δt‖ < 2 mm "
             "| s / case: transform / whole call |", "|---|---|" + "---|" * (len(RIGID_COLUMNS) + 2)]
    for row in r["results"]:
        lines.append(f"| {row['task']} | {row['method']} | " + " | ".join(pm(row[c]) for c, _ in RIGID_COLUMNS)
                     + f" | {row['recovered_below_2mm_percent']:.0f} % | {row['seconds_transform_per_case']:.1f} / "
                     f"{row['seconds_per_case']:.1f} |")
    lines += ["", f"{r['results'][0]['cases']} cases per task, mean ± sd. \"Default call\": coarse rotation search, "
              "the NMI pyramid and the confidence; \"registration alone\": from the identity without the confidence, "
              "as SimpleITK's is run. \"Transform\" is the computation of the transform (our report's "
              "`seconds_method`); our whole call adds the QA report and the resampled image. "
              + source(r, "rigid_nmi_accuracy")]
    return "\n".join(lines)


LM_COLUMNS = (("t_norm_mm", "‖Δt‖ mm"), ("t_x_mm", "\\|Δt_x\\|"), ("t_y_mm", "\\|Δt_y\\|"), ("t_z_mm", "\\|Δt_z\\|"),
              ("theta_x_deg", "\\|Δθ_x\\|°"), ("theta_y_deg", "\\|Δθ_y\\|°"), ("theta_z_deg", "\\|Δθ_z\\|°"))


@table("learned-metric")
def learned_metric(results_dir: Path) -> str:
    lines = ["| task (metric set) | method | " + " | ".join(c[1] for c in LM_COLUMNS) + " | s / case |",
             "|---|---|" + "---|" * (len(LM_COLUMNS) + 1)]
    notes, missing = [], []
    for name in ("learned_metric_t1_t2", "learned_metric_t1_gm"):
        try:
            r = load(results_dir, name)
        except Missing:
            missing.append(missing_line(name))
            continue
        task = f"{r['task'].upper()} ({r['model']})"
        for row in r["results"]["methods"]:
            seconds = "–" if row["seconds_per_case"] is None else f"{row['seconds_per_case']:.1f}"
            lines.append(f"| {task} | {row['method']} | " + " | ".join(pm(row[c]) for c, _ in LM_COLUMNS)
                         + f" | {seconds} |")
        t = r["results"]["paired_tests_t_norm"]
        notes.append(f"{r['task'].upper()}: mean CNN − NMI ‖Δt‖ = {t['mean_difference_cnn_minus_nmi_mm']:+.2f} mm, "
                     f"paired t-test p = {p_value(t['t_test_p'])}, Wilcoxon p = {p_value(t['wilcoxon_p'])} "
                     f"(n = {t['n']}). " + source(r, name))
    if len(lines) == 2:
        return "\n".join(missing)
    return "\n".join(lines + [""] + [n + "\n" for n in notes] + missing).rstrip("\n")


def diffeo_rows(r: dict) -> dict:
    """{(method, direction): row} of the similarity table and {method: seconds} of a diffeo evaluation."""
    rows = {(x["method"], x["direction"]): x for x in r["results"]["similarity_and_dice"]}
    regularity = {(x["method"], x["direction"]): x for x in r["results"]["regularity"]}
    seconds = {x["method"]: x for x in r["results"]["seconds"]}
    return rows, regularity, seconds


DIFFEO_FILES = ("diffeo_evaluation_bfloat16", "diffeo_evaluation_float32")


def diffeo_runs(results_dir: Path) -> list:
    """[(name, record)] of the diffeo evaluations present: the network in bfloat16 (what ``precision=auto``
    runs on a CPU with bfloat16 instructions) first, then float32 (what it runs elsewhere)."""
    runs = []
    for name in DIFFEO_FILES:
        try:
            runs.append((name, load(results_dir, name)))
        except Missing:
            pass
    if not runs:
        raise Missing(DIFFEO_FILES[0])
    return runs


def diffeo_speed(r: dict) -> tuple:
    """(transforms, whole call): demons' time over ours."""
    _, _, seconds = diffeo_rows(r)
    _, ours, demons = r["results"]["methods"]
    return (seconds[demons]["inference"]["mean"] / seconds[ours]["inference"]["mean"],
            seconds[demons]["register"]["mean"] / seconds[ours]["register"]["mean"])


@table("diffeo")
def diffeo(results_dir: Path) -> str:
    runs = diffeo_runs(results_dir)
    name, r = runs[0]
    rows, regularity, seconds = diffeo_rows(r)
    lines = ["| method | direction | NMI | MSE | Dice GM | Dice WM | % folding voxels | min det J | "
             "s per pair: transforms / whole call |", "|---|---|---|---|---|---|---|---|---|"]
    for (method, direction), row in rows.items():
        reg = regularity.get((method, "forward" if direction == "moving→fixed" else "inverse"))
        fold = "–" if reg is None else f"{reg['folding_percent']['mean']:.4f}"
        jmin = "–" if reg is None else pm(reg["jacobian_min"])
        time = "–"
        if direction == "moving→fixed":
            s = seconds[method]
            time = f"{s['inference']['mean']:.2f} / {s['register']['mean']:.2f}"
        lines.append(f"| {method} | {direction} | {pm(row['NMI'], 4)} | {pm(row['MSE'], 4)} | "
                     f"{pm(row['Dice GM'], 4)} | {pm(row['Dice WM'], 4)} | {fold} | {jmin} | {time} |")
    for other_name, other in runs:
        transforms, whole = diffeo_speed(other)
        lines += ["", f"Network in {other['precision']}, {other['threads']} thread(s): demons takes "
                  f"{transforms:.1f}× our time for the transforms and {whole:.1f}× for the whole call"
                  + (f" ({other['pairs']} pairs, mean ± sd above). " if other_name == name else ". ")
                  + source(other, other_name)]
    return "\n".join(lines)


@table("dirnet")
def dirnet(results_dir: Path) -> str:
    r = load(results_dir, "dirnet_vs_bspline")
    lines = ["| data (ICBM 2009a, unseen) | method | Dice (GM, WM mean) | s per registration | "
             "time ratio SimpleITK / DIRNet |", "|---|---|---|---|---|"]
    for dim, unit in (("2D", "slice"), ("3D", "volume")):
        x = r["results"][dim]
        data = f"{dim}, {count(x['pairs'], 'test pair')}"
        lines.append(f"| {data} | before registration | {pm(x['dice']['before'], 3)} | | |")
        lines.append(f"| {data} | DIRNet (`{x['model']}`) | {pm(x['dice']['DIRNet'], 3)} | "
                     f"{x['seconds']['DIRNet']:.3f} per {unit} | |")
        lines.append(f"| {data} | SimpleITK B-spline ({x['baseline_grid_spacing_mm']:g} mm grid) | "
                     f"{pm(x['dice']['SimpleITK'], 3)} | {x['seconds']['SimpleITK']:.3f} per {unit} | "
                     f"{x['time_ratio_simpleitk_over_dirnet']:.1f} |")
    lines += ["", "Mean ± sd over pairs, one CPU thread for both. " + source(r, "dirnet_vs_bspline")]
    return "\n".join(lines)


DEEPSIM_METRICS = (("identity", "before registration"), ("deepsim", "DeepSim"), ("mse", "MSE"), ("ncc", "NCC"),
                   ("ncc_sup", "NCC_sup"))


@table("deepsim")
def deepsim(results_dir: Path) -> str:
    lines = ["| data | metric | λ | Dice mean ± sd | Dice at noise σ = 0.2 | Wilcoxon p, DeepSim better |",
             "|---|---|---|---|---|---|"]
    notes, missing = [], []
    for dim in ("2d", "3d"):
        name = f"deepsim_comparison_{dim}"
        try:
            r = load(results_dir, name)
        except Missing:
            missing.append(missing_line(name))
            continue
        summary = r["results"]["summary"]
        for key, label in DEEPSIM_METRICS:
            s = summary[key]
            noisy = s.get("noise", {}).get("0.2", {}).get("dice")
            lines.append(f"| {dim.upper()}, {s['pairs']} test pairs | {label} | {s.get('lambda', '–')} | "
                         f"{s['dice_mean']:.4f} ± {s['dice_sd']:.4f} | "
                         f"{'–' if noisy is None else f'{noisy:.4f}'} | {p_value(s.get('wilcoxon_p_deepsim_better'))} |")
        notes.append(source(r, name))
    if len(lines) == 2:
        return "\n".join(missing)
    return "\n".join(lines + [""] + [n + "\n" for n in notes] + missing).rstrip("\n")


# ------------------------------------------------------------------------------ options, from the specs


def options_table(method: str) -> str:
    """A method's options, masks and default model, read from its spec (what ``register --help`` prints)."""
    sys.path.insert(0, str(ROOT / "DeepRegistration"))
    from DeepRegistrationLib.methods import SPECS

    spec = SPECS[method]
    lines = ["| option (`--param KEY=VALUE`) | type | default | allowed | what it sets |", "|---|---|---|---|---|"]
    for o in spec.options:
        default = "auto" if o.default is None else (",".join(f"{v:g}" for v in o.default)
                                                    if isinstance(o.default, tuple) else f"{o.default}")
        if o.choices:
            allowed = ", ".join(map(str, o.choices))
        elif o.minimum is not None or o.maximum is not None:
            allowed = f"{'' if o.minimum is None else f'{o.minimum:g}'}..{'' if o.maximum is None else f'{o.maximum:g}'}"
        else:
            allowed = "any"
        lines.append(f"| `{o.name}` | {o.type} | {default} | {allowed} | {o.help} |")
    if not spec.options:
        lines = ["This method has no options."]
    masks = " and ".join(sorted(spec.masks)) or "no"
    lines += ["", f"Masks: honours {masks} masks" + ("" if spec.masks == frozenset({"fixed", "moving"}) else
                                                    " (a mask it cannot use is refused with an error)") + ". "
              + (f"Model kind `{spec.model_kind}`; without `--model` the bundled `{spec.default_model}` is used "
                 "and the report says so." if spec.model_kind else "No model file.")
              + f" Gives {'a ' + spec.transform if spec.transform != 'deformable' else 'a deformable'} transform"
              + (" and its inverse." if spec.inverse else ".")]
    return "\n".join(lines)


for _name in ("nmi", "learned-metric", "deepsim-rigid", "diffeo", "dirnet", "deepsim"):
    TABLES[f"options-{_name}"] = (lambda method: lambda results_dir: options_table(method))(_name)


def compact(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {compact(v)}" for k, v in value.items() if k != "name")
    if isinstance(value, (list, tuple)):
        return "×".join(compact(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def validation_text(meta: dict) -> str:
    t = meta["training"]
    if meta.get("stages"):
        return "patch-pair classification accuracy per stage " + ", ".join(
            f"{s['validation_accuracy']:.3f}" for s in meta["stages"]) + " (chance 0.5)"
    if t.get("final_val_dice") is not None:
        return f"segmentation Dice {t['final_val_dice']:.3f}"
    if meta.get("lambda_search"):
        return f"λ = {meta['lambda']:g} kept by validation Dice (" + ", ".join(
            f"{c['lambda']:g} → {c['val_dice']:.3f}" for c in meta["lambda_search"]) + ")"
    if t.get("final_val_loss") is not None:
        identity, selected = t.get("identity_val_loss"), t.get("selected") or {}
        text = f"loss {selected.get('val_loss', t['final_val_loss']):.4f}"
        if selected:
            text += f" (the kept step {selected['step']}; at the start {t['initial_val_loss']:.4f})"
        return text + ("" if identity is None else f"; identity {identity:.4f}")
    return "–"


def training_data_text(t: dict) -> str:
    corpus = t.get("corpus")
    if corpus and not t.get("data"):
        return (f"subject corpus, {corpus['mode']}: train split {', '.join(corpus['train_subjects'])}; "
                f"selected on the validation split {', '.join(corpus['validation_subjects'])}")
    return (t.get("data") or t.get("description")) + (f"; {t['split']}" if t.get("split") else "")


def model_cards(kinds) -> str:
    """The bundled models of these kinds, from their metadata (``models.model_file.read_metadata``)."""
    sys.path.insert(0, str(ROOT / "DeepRegistration"))
    from DeepRegistrationLib.models.model_file import bundled_model_names, read_metadata

    blocks = []
    for name in bundled_model_names():
        meta = read_metadata(name)
        if meta["kind"] not in kinds:
            continue
        t = meta["training"]
        arch = meta["architecture"]
        if meta.get("stages"):
            size = (f"{meta['patch_size']}³ patches, one network per stage at "
                    + ", ".join(f"{s['spacing_mm']:g}" for s in meta["stages"]) + " mm")
        else:
            size = (f"{'×'.join(map(str, meta['patch_size']))} voxels at "
                    f"{'×'.join(f'{v:g}' for v in meta['spacing_mm'])} mm")
        lines = [f"**`{name}`** ({meta['kind']}, created {meta['created'][:10]})", "",
                 f"- architecture: {arch.get('name', '')}; {compact(arch.get('config', arch))}",
                 f"- input: {size}; intensities {meta['intensity_normalization']}",
                 f"- training data: {training_data_text(t)}",
                 f"- validation: {validation_text(meta)}"]
        if meta.get("selection"):
            sel = meta["selection"]
            lines.append(f"- selection: by {sel['criterion']} ({sel['data']}): "
                         + "; ".join(f"{c['name']}: {c['error_mm']:.3f} mm" for c in sel["candidates"])
                         + f". Kept: {sel['chosen']} (`{sel['command']}`, commit {sel['code_commit'][:10]})")
        chain, node = [], t
        while node:
            chain.append(node)
            node = node.get("initialized_from")
        for depth, node in enumerate(reversed(chain), start=1):
            prefix = f"step {depth} of {len(chain)}: " if len(chain) > 1 else ""
            commit = (node.get("code_commit") or "not recorded")[:10] + (
                " with uncommitted changes" if node.get("code_dirty") else "")
            lines.append(f"- {prefix}trained at commit {commit} by `{node.get('command')}`")
            sequence = node.get("command_sequence")
            if sequence:
                lines.append(f"  (run in pieces: `{sequence['commands'][0]}`, then "
                             + ", then ".join(sequence["commands"][1:]) + ")")
        if t.get("data_command"):
            lines.append(f"- data made by `{t['data_command']}`")
        if t.get("reproducibility_note"):
            lines.append(f"- note: {t['reproducibility_note']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "No bundled model of this kind."


for _name, _kinds in (("learned-metric", ("cnn-metric",)), ("diffeo", ("diffeo",)), ("dirnet", ("dirnet",)),
                      ("deepsim", ("deepsim-features", "deepsim"))):
    TABLES[f"models-{_name}"] = (lambda kinds: lambda results_dir: model_cards(kinds))(_kinds)


# ------------------------------------------------------------------------------------ the README's status


def status_rigid(results_dir):
    r = load(results_dir, "rigid_nmi_accuracy")["results"]
    ours = [x for x in r if "default call" in x["method"]]
    alone = [x for x in r if "registration alone" in x["method"]]
    theirs = [x for x in r if not x["method"].startswith("NMI")]
    tasks = " / ".join(x["task"].split(" ")[0].replace("-", "↔") for x in ours)

    def ratio_range(arm):
        ratios = [t["seconds_transform_per_case"] / o["seconds_transform_per_case"] for o, t in zip(arm, theirs)]
        return f"{min(ratios):.2f}–{max(ratios):.2f}"

    return ("rigid NMI (`nmi`)", f"{ours[0]['cases']} random misregistrations per task, {tasks}",
            "‖Δt‖ " + " / ".join(pm(x["t_norm_mm"]) for x in ours) + " mm; "
            + f"{min(x['recovered_below_2mm_percent'] for x in ours):.0f} % within 2 mm",
            "SimpleITK Mattes MI: " + " / ".join(pm(x["t_norm_mm"]) for x in theirs) + " mm",
            f"SimpleITK takes {ratio_range(alone)} of the time of our registration alone (from the identity) "
            f"and {ratio_range(ours)} of our default call (rotation search and confidence included)", "–",
            "rigid_nmi_accuracy")


def status_learned_metric(results_dir, task):
    name = f"learned_metric_{task.replace('-', '_')}"
    r = load(results_dir, name)
    rows = {x["method"]: x for x in r["results"]["methods"]}
    cnn, nmi, t = rows["CNN"], rows["NMI (60 bins)"], r["results"]["paired_tests_t_norm"]
    met = cnn["t_norm_mm"]["mean"] < nmi["t_norm_mm"]["mean"] and (t["t_test_p"] or 1) < 0.05
    pair = task.upper().replace("-", "↔")
    return (f"rigid learned metric (`learned-metric`), {pair}",
            f"{cnn['cases']} new subjects (seeds unseen in training) of the SPM avg152 template the set was first "
            f"trained on, {pair}",
            f"‖Δt‖ {pm(cnn['t_norm_mm'])} mm (`{r['model']}`{older_weights(r, r['model'])})", f"NMI: {pm(nmi['t_norm_mm'])} mm",
            f"{cnn['seconds_per_case'] / nmi['seconds_per_case']:.1f}× NMI's time",
            f"CNN below NMI (p < 0.05): **{'met' if met else 'not met'}** (paired t-test p = {p_value(t['t_test_p'])})",
            name)


def older_weights(record: dict, model: str) -> str:
    """A note when a results file was made before the bundled model's current weights."""
    from DeepRegistrationLib.models.model_file import read_metadata
    return ", its weights before the corpus fine-tuning" if record["date"] < read_metadata(model)["created"] else ""


def status_diffeo(results_dir):
    runs = diffeo_runs(results_dir)
    name, r = runs[0]
    rows, regularity, _ = diffeo_rows(r)
    rigid, ours, demons = r["results"]["methods"]
    gm = {m: rows[(m, "moving→fixed")]["Dice GM"]["mean"] for m in (rigid, ours, demons)}
    folding = sum(regularity[(ours, d)]["pairs_with_folding"] for d in ("forward", "inverse"))
    speed = {x["precision"]: diffeo_speed(x) for _, x in runs}
    speed_text = "; ".join(f"network in {p}: {a:.1f}× (transforms), {b:.1f}× (whole call) faster than demons"
                           for p, (a, b) in speed.items())
    targets = [f"Dice ≥ demons: **{'met' if gm[ours] >= gm[demons] else 'not met'}**"]
    targets += [f"≥ 10× demons ({p}): **{'met' if min(v) >= 10 else 'not met'}**" for p, v in speed.items()]
    return ("diffeomorphic patch-wise (`diffeo`)", f"{r['pairs']} ICBM 2009a pairs (held out from the model's "
            "training, not from choosing the intensity matching: a unit test on an ICBM crop), network alone",
            f"GM Dice {gm[rigid]:.3f} (rigid only) → {gm[ours]:.4f}; "
            + ("no folding voxels" if folding == 0 else f"folding in {folding} transforms"),
            f"SimpleITK diffeomorphic demons: GM Dice {gm[demons]:.4f}",
            f"{speed_text}; {r['threads']} thread(s)", "; ".join(targets), ", ".join(n for n, _ in runs))


def status_dirnet(results_dir):
    r = load(results_dir, "dirnet_vs_bspline")["results"]
    met = all(r[d]["dice"]["DIRNet"]["mean"] >= r[d]["dice"]["SimpleITK"]["mean"] - 0.01
              and r[d]["time_ratio_simpleitk_over_dirnet"] >= 10 for d in ("2D", "3D"))
    return ("DIRNet (`dirnet`)", f"{count(r['2D']['pairs'], '2D slice pair')} and {count(r['3D']['pairs'], '3D pair')}, "
            "ICBM 2009a",
            "Dice " + " / ".join(f"{r[d]['dice']['DIRNet']['mean']:.3f} ({d})" for d in ("2D", "3D")),
            "SimpleITK B-spline: " + " / ".join(f"{r[d]['dice']['SimpleITK']['mean']:.3f}" for d in ("2D", "3D")),
            " / ".join(f"{r[d]['time_ratio_simpleitk_over_dirnet']:.0f}×" for d in ("2D", "3D")) + " faster",
            f"within 0.01 Dice at ≥ 10× the speed: **{'met' if met else 'not met'}**", "dirnet_vs_bspline")


def status_deepsim(results_dir, dim):
    name = f"deepsim_comparison_{dim}"
    s = load(results_dir, name)["results"]["summary"]
    beaten = [label for key, label in DEEPSIM_METRICS[2:4] if (s[key].get("wilcoxon_p_deepsim_better") or 1) < 0.05]
    return (f"DeepSim (`deepsim`), {dim.upper()}", f"{s['deepsim']['pairs']} test pairs of new subjects (seeds) of the ICBM 2009a template the models were trained on",
            f"Dice {s['deepsim']['dice_mean']:.3f} (before registration {s['identity']['dice_mean']:.3f})",
            ", ".join(f"{label} {s[key]['dice_mean']:.3f}" for key, label in DEEPSIM_METRICS[2:]), "–",
            f"above MSE and NCC (p < 0.05): **{'met' if len(beaten) == 2 else 'not met'}**", name)


ROBUSTNESS_ARMS = (("nmi_search", "`nmi`, `init=search` (default)"), ("nmi_none", "`nmi`, `init=none`"),
                   ("sitk_moments", "SimpleITK Mattes MI after MOMENTS centring"),
                   ("ants", "ANTs `affine_initializer`, then rigid"))


@table("rigid-robustness")
def rigid_robustness(results_dir: Path) -> str:
    r = load(results_dir, "rigid_evaluation")
    s = r["results"]["summary"]
    lines = ["| method | recovered | median TRE mm | max TRE mm | s / case |", "|---|---|---|---|---|"]
    for key, label in ROBUSTNESS_ARMS:
        if key in s:
            x = s[key]
            lines.append(f"| {label} | {x['recovered']}/{x['cases']} | {x['tre_median_mm']:.2f} | "
                         f"{x['tre_max_mm']:.2f} | {x['seconds_mean']:.0f} |")
    c = s["confidence"]
    thresholds = c["thresholds"]
    lines += ["", f"Confidence over the {c['results']} `nmi` results (both starts): {c['failures']} failures "
                  f"(TRE > 5 mm), {c['failures_flagged_percent']:.0f} % of them flagged; {c['good']} good results, "
                  f"{c['good_flagged_percent']:.1f} % of them flagged; Spearman ρ(uncertainty_mm, TRE) = "
                  f"{c['spearman_uncertainty_vs_tre']:.2f} (p = {p_value(c['spearman_p'])}). Thresholds: "
                  f"uncertainty {thresholds['max_uncertainty_mm']:g} mm, misfit {thresholds['max_misfit']:g}, rise "
                  f"{thresholds['max_rise']:g} σ. Data: {r['data']}. " + source(r, "rigid_evaluation")]
    return "\n".join(lines)


def _pair_cell(value, digits):
    return "–" if value is None else f"{value:.{digits}f}"


@table("deformable-evaluation")
def deformable_evaluation(results_dir: Path) -> str:
    r = load(results_dir, "deformable_evaluation")
    rows = r["results"]["rows"]
    speed = {(m, x["pair"]): x["one_direction"] for m, xs in r["results"]["speedup_vs_demons"].items() for x in xs}
    same = [x for x in rows if x["kind"] != "inter-subject"]
    lines = ["| pair | method | error mm (→ / ←) | tissue Dice (→ / ←) | folding voxels (→ / ←) | s, one direction "
             "| demons' time ÷ ours |", "|---|---|---|---|---|---|---|"]
    for x in same:
        if "error" in x:
            lines.append(f"| {x['pair'].split(' /')[0]} | {x['method']} | failed: {x['error'][:80]} | | | | |")
            continue
        f, b = x["forward"], x.get("reverse") or {}
        fold = "–" if "folding_voxels" not in f else f"{f['folding_voxels']} / {b.get('folding_voxels', '–')}"
        lines.append(f"| {x['pair'].split(' /')[0]} | {x['method']} | {f['displacement_error_mm']:.2f} / "
                     f"{_pair_cell(b.get('displacement_error_mm'), 2)} | {f['dice_tissue']:.3f} / "
                     f"{_pair_cell(b.get('dice_tissue'), 3)} | {fold} | "
                     f"{_pair_cell(x.get('seconds_one_direction'), 1)} | "
                     f"{_pair_cell(speed.get((x['method'], x['pair'])), 2)} |")
    inter = [x for x in rows if x["kind"] == "inter-subject" and "error" not in x]
    if inter:
        lines += ["", f"Inter-subject: {inter[0]['pair']}.", "",
                  "| method | tissue Dice | brain Dice | tissue HD95 mm | brain HD95 mm | folding voxels | s |",
                  "|---|---|---|---|---|---|---|"]
        for x in inter:
            f = x["forward"]
            lines.append(f"| {x['method']} | {f['dice_tissue']:.3f} | {f['dice_brain']:.3f} | "
                         f"{f['hd95_tissue_mm']:.2f} | {f['hd95_brain_mm']:.2f} | {f.get('folding_voxels', '–')} | "
                         f"{_pair_cell(x.get('seconds_one_direction'), 1)} |")
    touched = {m: v["trained_on_test_subjects"] for m, v in r["models"].items() if v["trained_on_test_subjects"]}
    note = "".join(f" The bundled `{m}` model's training drew on test subject(s) {', '.join(v)}: its rows for "
                   f"them are on training data." for m, v in touched.items())
    parts = "".join(f" Part `{p['command']}` ran at load average {p['machine']['load_average_1min']['start']}–"
                    f"{p['machine']['load_average_1min']['end']}." for p in r.get("parts", []) if "command" in p)
    if parts:
        parts = (" The runs were made in parts side by side on the 2-core CPU (a row comes from the first part "
                 "that has it); compare seconds within one part only." + parts)
    return "\n".join(lines + ["", f"One row per subject pair and method; → the moving image onto the fixed one, ← the inverse "
                                   f"direction. {r['threads']} thread(s).{note}{parts} " + source(r, "deformable_evaluation")])


def status_deformable_test(results_dir, method):
    r = load(results_dir, "deformable_evaluation")
    rows = [x for x in r["results"]["rows"] if x["kind"] != "inter-subject" and "error" not in x]
    by = {(x["pair"], x["method"]): x for x in rows}
    pairs = sorted({x["pair"] for x in rows})
    speed = {(m, x["pair"]): x["one_direction"] for m, xs in r["results"]["speedup_vs_demons"].items() for x in xs}

    def cell(m):
        return "; ".join(f"{p.split(' /')[0]} {by[(p, m)]['forward']['displacement_error_mm']:.2f} mm, Dice "
                         f"{by[(p, m)]['forward']['dice_tissue']:.3f}" for p in pairs if (p, m) in by)

    ours = [by[(p, method)] for p in pairs if (p, method) in by]
    demons = [by[(p, "demons")] for p in pairs if (p, "demons") in by]
    none = [by[(p, "none")] for p in pairs]
    net = f"{method}/network"
    if method == "diffeo":
        folding = sum(x["forward"].get("folding_voxels", 0) + (x.get("reverse") or {}).get("folding_voxels", 0)
                      for x in ours)
        misses = [f"{o['pair'].split(' /')[0]} {what} {o['forward'][key]:{fmt}} vs {d['forward'][key]:{fmt}}"
                  for o, d in zip(ours, demons)
                  for what, key, fmt, worse in (("error", "displacement_error_mm", ".2f", lambda a, b: a > b),
                                                ("Dice", "dice_tissue", ".3f", lambda a, b: a < b))
                  if worse(o["forward"][key], d["forward"][key])]
        accuracy = "**met**" if not misses else f"**not met** ({'; '.join(misses)})"
        fast = [speed.get((method, p)) for p in pairs]
        fast_net = [speed.get((net, p)) for p in pairs]
        target = (f"error ≤ and Dice ≥ demons': {accuracy}; 0 folding: "
                  f"**{'met' if folding == 0 else 'not met'}**; time ≤ demons': "
                  f"**{'met' if all(f and f >= 1 for f in fast) else 'not met'}**; network ≥ 10× demons: "
                  f"**{'met' if all(f and f >= 10 for f in fast_net) else 'not met'}**")
        speed_text = ", ".join(f"{f:.2f}×" for f in fast if f) + " demons' speed with IO; network alone " \
            + ", ".join(f"{f:.0f}×" for f in fast_net if f)
    else:
        better = all(o["forward"]["displacement_error_mm"] < n["forward"]["displacement_error_mm"]
                     and o["forward"]["dice_tissue"] > n["forward"]["dice_tissue"] for o, n in zip(ours, none))
        target = f"IO better than no registration in every pair: **{'met' if better else 'not met'}**"
        ratios = [f"{speed[(method, p)]:.2f}×" for p in pairs if (method, p) in speed]
        speed_text = (", ".join(ratios) + " demons' speed") if ratios else \
            f"{sum(o['seconds_one_direction'] for o in ours) / len(ours):.0f} s per direction (not timed beside demons)"
    seen = r["models"].get(method, {}).get("trained_on_test_subjects") or []
    return (f"`{method}` with instance optimization, test-split heads", "test split: " + ", ".join(
                p.split(" /")[0] for p in pairs) + ", each under a known diffeomorphism, 2 mm"
            + (f" ({', '.join(seen)}: training data of this model)" if seen else ""),
            cell(method) + f" (network alone: {cell(net)})", "demons: " + cell("demons") + "; none: " + cell("none"),
            speed_text, target, "deformable_evaluation")


def status_rigid_robustness(results_dir):
    r = load(results_dir, "rigid_evaluation")
    s = r["results"]["summary"]
    c = s["confidence"]
    ok = c["failures_flagged_percent"] is not None and c["failures_flagged_percent"] >= 90 \
        and c["good_flagged_percent"] <= 10
    return ("rigid start and confidence (`nmi`)", f"test split, {s['nmi_search']['cases']} cases of 60–90° and "
            "30–60 mm", f"recovered {s['nmi_search']['recovered']}/{s['nmi_search']['cases']}; confidence flags "
            f"{c['failures_flagged_percent']:.0f} % of failures, {c['good_flagged_percent']:.0f} % of good results",
            f"SimpleITK (MOMENTS): {s['sitk_moments']['recovered']}/{s['sitk_moments']['cases']}",
            f"{s['nmi_search']['seconds_mean']:.0f} s vs {s['sitk_moments']['seconds_mean']:.0f} s per case",
            f"all recovered: **{'met' if s['nmi_search']['recovered'] == s['nmi_search']['cases'] else 'not met'}**;"
            f" flags ≥ 90 % / ≤ 10 %: **{'met' if ok else 'not met'}**", "rigid_evaluation")


def status_metric_corpus(results_dir, task):
    name = f"metric_corpus_{task.replace('-', '_')}"
    r = load(results_dir, name)
    s = r["results"]["summary"]
    model = r["models"][0]
    ours, nmi = s[model], s["nmi"]
    test = ours.get("paired_vs_nmi_over_subjects", {})
    met = ours["failures_over_5mm"] == 0 and ours["tre_mean_mm"] <= nmi["tre_mean_mm"]
    pair = task.upper().replace("-", "↔")
    return (f"learned metric (`learned-metric`, NMI start), {pair}", r["data"], f"TRE {ours['tre_mean_mm']:.2f} mm (max {ours['tre_max_mm']:.2f}; "
            f"`{Path(model).stem}`)", f"NMI: {nmi['tre_mean_mm']:.2f} mm (max {nmi['tre_max_mm']:.2f})",
            f"{ours['seconds_mean'] / nmi['seconds_mean']:.1f}× NMI's time",
            f"no case > 5 mm and mean ≤ NMI's: **{'met' if met else 'not met'}** ({test.get('n_subjects', 0)} "
            f"subjects: no paired test is meaningful)" if test.get("n_subjects", 0) < 5 else
            f"no case > 5 mm and mean ≤ NMI's: **{'met' if met else 'not met'}** (Wilcoxon over subjects p = "
            f"{p_value(test.get('wilcoxon_p'))})", name)


@table("status")
def status(results_dir: Path) -> str:
    rows = [("rigid NMI (`nmi`)", lambda d: status_rigid(d), "rigid_nmi_accuracy"),
            ("rigid start and confidence", lambda d: status_rigid_robustness(d), "rigid_evaluation"),
            ("learned metric T1↔T2, unseen heads", lambda d: status_metric_corpus(d, "t1-t2"), "metric_corpus_t1_t2"),
            ("learned metric T1↔GM, unseen heads", lambda d: status_metric_corpus(d, "t1-gm"), "metric_corpus_t1_gm"),
            ("learned metric T1↔GM", lambda d: status_learned_metric(d, "t1-gm"), "learned_metric_t1_gm"),
            ("learned metric T1↔T2", lambda d: status_learned_metric(d, "t1-t2"), "learned_metric_t1_t2"),
            ("`diffeo`, unseen heads", lambda d: status_deformable_test(d, "diffeo"), "deformable_evaluation"),
            ("`dirnet`, unseen heads", lambda d: status_deformable_test(d, "dirnet"), "deformable_evaluation"),
            ("`deepsim`, unseen heads", lambda d: status_deformable_test(d, "deepsim"), "deformable_evaluation"),
            ("diffeomorphic (`diffeo`)", lambda d: status_diffeo(d), "diffeo_evaluation_float32"),
            ("DIRNet (`dirnet`)", lambda d: status_dirnet(d), "dirnet_vs_bspline"),
            ("DeepSim (`deepsim`), 2D", lambda d: status_deepsim(d, "2d"), "deepsim_comparison_2d"),
            ("DeepSim (`deepsim`), 3D", lambda d: status_deepsim(d, "3d"), "deepsim_comparison_3d")]
    lines = ["| method | test data | ours | baseline | speed | target | results file |",
             "|---|---|---|---|---|---|---|"]
    for label, render, name in rows:
        try:
            cells = render(results_dir)
            files = ", ".join(f"[{n}.json](benchmarks/results/{n}.json)" for n in cells[-1].split(", "))
        except Missing as missing:
            cells = (label, "–", "not measured with the current scripts yet", "–", "–", "–")
            files = f"none yet (`{missing.name}.json`)"
        lines.append("| " + " | ".join(cells[:6]) + f" | {files} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ rewriting


def render(name: str, results_dir: Path = RESULTS) -> str:
    if name not in TABLES:
        raise KeyError(f"no table named {name!r} (known: {', '.join(TABLES)})")
    try:
        return TABLES[name](results_dir)
    except Missing as missing:
        return missing_line(missing.name)


def rewrite(text: str, results_dir: Path = RESULTS) -> str:
    """``text`` with every marked table generated again."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name"), results_dir) + "\n" + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a table is out of date")
    args = p.parse_args(argv)
    stale = []
    for relative in DOCUMENTS:
        path = ROOT / relative
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            stale.append(relative)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("tables out of date with benchmarks/results: " + ", ".join(stale) + " (run python scripts/readme_tables.py)")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "all tables agree with benchmarks/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
