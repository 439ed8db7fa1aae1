"""Cost of defense-aware attacks (issue 12): a cell under each adaptive attack against the
same cell under plain ALIE, measured side by side in one run, one torch thread.

The cell: bundled digits, MLP [64], 20 iid clients, 30 rounds, 5 local steps, batch 32,
20% malicious (configs/quick.yaml's settings). For each defense, each attack's cell is run
``--repeat`` times interleaved with the ALIE cell; the figure is the ratio of medians.
Target: an adaptive attack costs ≤ 3× plain ALIE (the ``adaptive`` wrapper and the
line-search attacks; reported for every aware attack).

    python benchmarks/bench_adaptive_cost.py [--repeat 5] [--defenses krum median ...]

Also prints the oracle calls per round each attack makes (from its last round).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from byzbench.config import grid_from_dict
from byzbench.engine.simulation import Simulation

BASE = {"dataset": "digits", "model": {"name": "mlp", "hidden": [64]}, "partition": "iid",
        "clients": 20, "rounds": 30, "local": {"steps": 5, "batch_size": 32, "lr": 0.1},
        "eval_every": 5, "malicious_fraction": 0.2, "seed": 0, "device": "cpu"}
DEFENSES = ["krum", "median", "trimmed_mean", "geomed", "bulyan", "centered_clipping",
            "signguard", "sign_statistics", "multikrum"]
ATTACKS: list[dict] = [
    {"name": "alie"},
    {"name": "adaptive", "attack": "alie", "label": "adaptive(alie)"},
    {"name": "alie_opt"},
    {"name": "ipm_opt"},
    {"name": "fang_krum"},
    {"name": "fang_trim"},
    {"name": "minmax_tailored"},
]
TARGET = 3.0


def cell(attack: dict, defense: str):
    cells = grid_from_dict({"name": "cost", "base": {**BASE, "attack": attack,
                                                     "defense": defense}}).cells
    return cells[0].config


def timed(config) -> tuple[float, object]:
    sim = Simulation(config)
    start = time.perf_counter()
    sim.run()
    return time.perf_counter() - start, sim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--defenses", nargs="+", default=DEFENSES)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    worst = 0.0
    print(f"{'defense':<18} {'attack':<16} {'cell s':>8} {'× alie':>7} {'oracle calls/round':>19}")
    for defense in args.defenses:
        configs = {a.get("label", a["name"]): cell(a, defense) for a in ATTACKS}
        times: dict[str, list[float]] = {k: [] for k in configs}
        sims: dict[str, object] = {}
        for _ in range(args.repeat):
            for key, config in configs.items():
                seconds, sims[key] = timed(config)
                times[key].append(seconds)
        base = statistics.median(times["alie"])
        for key in configs:
            med = statistics.median(times[key])
            attack = sims[key].attack
            search = getattr(attack, "last_search", None)
            calls = (search.calls if search is not None
                     else getattr(attack, "last_calls", 0))
            ratio = med / base
            if key != "alie":
                worst = max(worst, ratio)
            print(f"{defense:<18} {key:<16} {med:8.3f} {ratio:7.2f} {calls:>19}")
    verdict = "PASS" if worst <= TARGET else "FAIL"
    print(f"\nworst ratio to plain ALIE: {worst:.2f}× (target ≤ {TARGET}×): {verdict}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
