"""Do defense-aware attacks find worse cases than the attacks that ignore the rule?
(issue 12, "what must be shown").

Setting: the bundled digits data, MLP [64], 20 clients split non-IID by a Dirichlet(α = 0.5)
label partition (Hsu et al. 2019), 30 rounds of 5 local SGD steps, 20% malicious, seeds
0–2 (``--seeds``). For krum, multikrum, median, trimmed_mean, bulyan, geomed,
centered_clipping, signguard and sign_statistics it runs every non-adaptive update/data
attack of the main grid and every defense-aware attack, and prints per defense the worst
final accuracy (mean over seeds) over the non-adaptive attacks, over the adaptive ones,
and the gap. Targets: fang_krum lowers Krum's accuracy, and fang_trim Trimmed mean's and
Median's, more than any non-adaptive attack does.

    python benchmarks/bench_adaptive.py [--seeds 0 1 2] [--out benchmarks/out/adaptive]
        [--workers 2]

The cells are stored in ``--out`` (a byzbench results directory: rerunning resumes).
Exits 1 if a target fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from byzbench.api import load_results, run
from byzbench.config import grid_from_dict

DEFENSES = ["krum", "multikrum", "median", "trimmed_mean", "bulyan", "geomed",
            "centered_clipping", "signguard", "sign_statistics"]
PLAIN: list = ["label_flip", "backdoor", "sign_flip",
               {"name": "scaling", "factor": 50, "label": "scaling x50"}, "gaussian", "alie",
               {"name": "ipm", "epsilon": 100, "label": "ipm e=100"}, "minmax", "minsum",
               "mimic"]
ADAPTIVE: list = ["fang_krum", "fang_trim", "alie_opt", "ipm_opt", "minmax_tailored",
                  "minsum_tailored",
                  {"name": "adaptive", "attack": "sign_flip", "label": "adaptive(sign_flip)"}]
TARGETS = {"krum": "fang_krum", "trimmed_mean": "fang_trim", "median": "fang_trim"}
BASE = {"dataset": "digits", "model": {"name": "mlp", "hidden": [64]},
        "partition": {"name": "dirichlet", "alpha": 0.5}, "clients": 20, "rounds": 30,
        "local": {"steps": 5, "batch_size": 32, "lr": 0.1}, "eval_every": 5,
        "malicious_fraction": 0.2}


def label(spec) -> str:
    return spec if isinstance(spec, str) else spec.get("label", spec["name"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/out/adaptive")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    grid = grid_from_dict({"name": "adaptive", "base": BASE, "grid": {
        "attack": ["none", *PLAIN, *ADAPTIVE], "defense": DEFENSES, "seed": args.seeds}})
    summary = run(grid, Path(args.out), workers=args.workers)
    if summary.failed:
        print(f"{len(summary.failed)} cells failed, e.g. {summary.failed[0]}")
        return 1
    cells = load_results(args.out).cells
    cells = cells[cells["status"] == "done"]
    mean = cells.groupby(["defense", "attack"])["accuracy"].mean().unstack("attack")
    plain, adaptive = [label(a) for a in PLAIN], [label(a) for a in ADAPTIVE]
    rows = []
    for defense in DEFENSES:
        acc = mean.loc[defense]
        rows.append({"defense": defense, "clean": acc["none"],
                     "worst non-adaptive": acc[plain].min(), "by": acc[plain].idxmin(),
                     "worst adaptive": acc[adaptive].min(), "by ": acc[adaptive].idxmin(),
                     "gap (points)": 100 * (acc[plain].min() - acc[adaptive].min())})
    table = pd.DataFrame(rows)
    print(f"digits, MLP [64], 20 clients Dirichlet(0.5), 20% malicious, seeds {args.seeds}: "
          "final accuracy, mean over seeds")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
        print("\nevery attack (rows) × defense (columns):")
        print(mean.T.loc[["none", *plain, *adaptive]].to_string())
    ok = True
    for defense, attack in TARGETS.items():
        acc = mean.loc[defense]
        passed = acc[attack] < acc[plain].min()
        ok &= bool(passed)
        print(f"target: {attack} lowers {defense} below every non-adaptive attack: "
              f"{acc[attack]:.3f} vs {acc[plain].min():.3f} ({acc[plain].idxmin()}): "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
