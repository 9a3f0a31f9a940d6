"""Write misregistered multimodal 'subjects' from the SPM avg152 templates (offline data) for the learned metric.

The cases are made by the library (``DeepRegistrationLib.data.corpus_pairs.metric_case``); this script writes
them as files. All of them derive from the corpus' train-split subject ``icbm152``. Each subject i: one smooth random deformation (data.synthetic.smooth_random_field) applied to the
exactly aligned SPM avg152 T1 and T2 (so they stay aligned), then the same intensity jitter draw
(data.synthetic.intensity_jitter, same seed for both modalities). The moving modality is T2
(task t1-t2) or the gradient magnitude of the subject's T1 (task t1-gm,
data.synthetic.gradient_magnitude). The moving image is then misregistered by a rigid transform
from Sedghi et al.'s distributions: translations U{lo, hi} mm per axis with random sign, rotations
U{-r, r} rad. The moving image is resampled onto the template grid by default, so anatomy that the
misregistration moves past the grid's border is lost (the SPM templates end inside the cerebellum);
``--moving-margin-mm M`` widens the moving grid by M mm on every side so that no anatomy is lost.
Training and test subjects use disjoint seeds (train: seed*1000 + i, test:
seed*1000 + 500 + i), so no test subject's deformation or misregistration is seen in training.

Writes OUT/{train,test}/subject_XX_{fixed,moving}.nii.gz, OUT/{train,test}.csv (pairs CSV) and
OUT/{train,test}_truth.json (true fixed->moving rigid transforms).

    python benchmarks/metric_subjects.py --task t1-t2 --out /tmp/t1t2 --train 8 --test 8
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from DeepRegistrationLib.core.io import write_image
from DeepRegistrationLib.data import sources
from DeepRegistrationLib.data.corpus_pairs import METRIC_TASKS, metric_case
from DeepRegistrationLib.training.common import write_pairs_csv


def make_split(out: Path, split: str, count: int, seed0: int, task: str, translation_mm, rotation_rad,
               moving_margin_mm=0.0) -> Path:
    t1, t2 = sources.spm_avg152("T1"), sources.spm_avg152("T2")
    rows, truth = [], []
    for i in range(count):
        fixed, moving, true = metric_case(t1, t2, task, seed0 + i, translation_mm, rotation_rad,
                                           moving_margin_mm=moving_margin_mm)
        f, m = out / split / f"subject_{i:02d}_fixed.nii.gz", out / split / f"subject_{i:02d}_moving.nii.gz"
        write_image(fixed, f)
        write_image(moving, m)
        rows.append({"fixed": f, "moving": m})
        truth.append({"fixed": str(f), "moving": str(m), "seed": seed0 + i, "angles_rad": true.angles_rad.tolist(),
                      "translation_mm": true.translation_mm.tolist(), "center_mm": true.center_mm.tolist()})
    write_pairs_csv(out / f"{split}.csv", rows)
    (out / f"{split}_truth.json").write_text(json.dumps(truth, indent=1))
    return out / f"{split}.csv"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=list(METRIC_TASKS), default="t1-t2")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=8)
    p.add_argument("--test", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-translation-mm", type=float, help="override the task's upper translation bound")
    p.add_argument("--moving-margin-mm", type=float, default=0.0,
                   help="widen the moving image's grid by this much on every side (default 0: the template grid)")
    args = p.parse_args(argv)
    (lo, hi), rot = METRIC_TASKS[args.task]
    if args.max_translation_mm is not None:
        hi = args.max_translation_mm
    out = Path(args.out)
    for split, count, seed0 in (("train", args.train, args.seed * 1000), ("test", args.test, args.seed * 1000 + 500)):
        if count:
            print(make_split(out, split, count, seed0, args.task, (lo, hi), rot, args.moving_margin_mm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
