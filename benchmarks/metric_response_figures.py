"""Response functions (Sedghi et al. Fig. 2b-d) of NMI and of every stage of a learned metric set, on one
unseen test subject, around its true pose; written as CSV + PNG for the docs.

    python benchmarks/metric_response_figures.py --data /tmp/t1-t2 --model sedghi-t1-t2 \
        --out docs/figures/response_t1_t2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from DeepRegistrationLib.core.io import read_image
from DeepRegistrationLib.core.transforms import RigidTransform
from DeepRegistrationLib.rigid.response_functions import nmi_and_cnn_panels, peak_offsets, write_response_csv
from DeepRegistrationLib.training.common import read_pairs_csv
from DeepRegistrationLib.viz.response_plot import save_response_plot


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder written by metric_subjects.py")
    p.add_argument("--model", required=True)
    p.add_argument("--case", type=int, default=0, help="test case index")
    p.add_argument("--out", required=True, help="output stem (.csv and .png are added)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    row = read_pairs_csv(Path(args.data) / "test.csv")[args.case]
    t = json.loads((Path(args.data) / "test_truth.json").read_text())[args.case]
    true = RigidTransform(t["angles_rad"], t["translation_mm"], t["center_mm"])
    panels = nmi_and_cnn_panels(read_image(row["fixed"]), read_image(row["moving"]), true, args.model)
    rows = [r for _, group in panels for r in group]
    write_response_csv(rows, f"{args.out}.csv")
    save_response_plot([], f"{args.out}.png", f"{args.model}: response around the true pose of test case "
                       f"{args.case} ({args.data}), 64 patches", panels=panels)
    print(f"Data: {row['fixed']} / {row['moving']} (test split), around its true pose; 64 patches.\n")
    print("| metric | " + " | ".join(f"peak {q}" for q in ("tx", "ty", "tz", "rx", "ry", "rz")) + " |")
    print("|---|" + "---|" * 6)
    peaks = peak_offsets(rows)
    for metric in dict.fromkeys(r["metric"] for r in rows):
        print(f"| {metric} | " + " | ".join(f"{peaks[(metric, q)]:+.1f}" for q in ("tx", "ty", "tz", "rx", "ry", "rz"))
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
