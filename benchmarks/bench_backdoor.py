"""Backdoor durability on the bundled digits data (issue 14, "what must be shown").

configs/quick.yaml's model and local training (MLP[64], 20 clients, 5 local steps), split
non-IID (Dirichlet α = 0.5), 40 rounds evaluated every round, 20% malicious; each backdoor
attacks in rounds 0–19 (``end_round: 19``) and the run goes on 20 rounds without it.
FedAvg and norm_clip, for backdoor, dba, neurotoxin and pgd with their defaults. Per
(defense, attack), mean over seeds (byzbench.metrics.durability): the ASR at the end of the
attack (round 19), 10 and 20 rounds later, and the rounds until the ASR fell below 20%.

Check (the Neurotoxin paper's claim, Zhang et al. ICML 2022): Neurotoxin's backdoor decays
more slowly than the plain backdoor's — per defense, its retention ASR(+10) / ASR(end),
mean over seeds, is at least the backdoor's. Printed PASS/FAIL; exit 1 on a FAIL.

    python benchmarks/bench_backdoor.py [--seeds 0 1 2] [--rounds 40] [--end 19] [--explore]
                                        [--defenses fedavg norm_clip]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from byzbench.config import grid_from_dict, load_yaml
from byzbench.engine.simulation import run_cell

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["backdoor", "dba", "neurotoxin", "pgd"]
DEFENSES = ["fedavg", "norm_clip"]
# --explore: informational Neurotoxin variants (no check), to see where its default sits
EXPLORE: list[dict] = [
    {"name": "neurotoxin", "top_k_percent": 10.0, "label": "nt(k=10%)"},
    {"name": "neurotoxin", "top_k_percent": 50.0, "label": "nt(k=50%)"},
    {"name": "neurotoxin", "estimate": "reference", "label": "nt(ref)"},
]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def _pct(value: float | None) -> str:
    return f"{value:6.1%}" if value is not None else f"{'-':>6}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--end", type=int, default=19, help="the attacks' end_round")
    ap.add_argument("--explore", action="store_true",
                    help="also run informational Neurotoxin variants (top_k_percent 10 and "
                         "50, estimate: reference)")
    ap.add_argument("--defenses", nargs="+", default=DEFENSES)
    args = ap.parse_args(argv)

    base = dict(load_yaml(ROOT / "configs" / "quick.yaml")["base"])
    base.update({"rounds": args.rounds, "eval_every": 1,
                 "partition": {"name": "dirichlet", "alpha": 0.5}})
    grid = grid_from_dict({
        "name": "bench-backdoor", "base": base,
        "grid": {"attack": [{"name": a, "end_round": args.end, "label": a} for a in ATTACKS]
                 + ([{**e, "end_round": args.end} for e in EXPLORE] if args.explore else []),
                 "defense": args.defenses, "malicious_fraction": [0.2],
                 "seed": list(args.seeds)},
    })
    rows: dict[tuple[str, str], list[dict]] = {}
    start = time.perf_counter()
    for cell in grid.cells:
        res = run_cell(cell.config)
        key = (str(cell.axes["defense"]), str(cell.axes["attack"]))
        rows.setdefault(key, []).append({**res.summary, "seed": cell.config.seed})

    print(f"digits, MLP[64], 20 clients, Dirichlet(0.5), {args.rounds} rounds, 20% malicious,"
          f" attacks in rounds 0-{args.end}, seeds {args.seeds}; "
          f"{time.perf_counter() - start:.1f} s")
    print(f"{'defense':<10} {'attack':<11} {'acc':>6} {'ASR end':>7} {'+10':>6} {'+20':>6} "
          f"{'retain+10':>9} {'to<20%':>7}   ASR end/+10/+20 per seed")
    retention: dict[tuple[str, str], float | None] = {}
    for (defense, attack), cells in rows.items():
        ends = [c["asr_end"] for c in cells]
        tens = [c["asr_after_10"] for c in cells]
        twenties = [c["asr_after_20"] for c in cells]
        kept = [t / e for e, t in zip(ends, tens) if e and t is not None]
        retention[(defense, attack)] = _mean(kept)
        recovered = [c["asr_recovery_rounds"] for c in cells
                     if c["asr_recovery_rounds"] is not None]
        rec = (f"{statistics.mean(recovered):.1f}" + ("" if len(recovered) == len(cells)
                                                      else f"({len(recovered)}/{len(cells)})")
               if recovered else f">{min(c['asr_horizon'] for c in cells)}")
        per_seed = "  ".join("/".join(f"{v:.2f}" if v is not None else "-" for v in
                                      (c["asr_end"], c["asr_after_10"], c["asr_after_20"]))
                             for c in cells)
        ret = retention[(defense, attack)]
        print(f"{defense:<10} {attack:<11} {_pct(_mean([c['accuracy'] for c in cells]))} "
              f"{_pct(_mean(ends)):>7} {_pct(_mean(tens))} {_pct(_mean(twenties))} "
              f"{(f'{ret:.2f}' if ret is not None else '-'):>9} {rec:>7}   {per_seed}")

    checks: list[tuple[str, bool]] = []
    for defense in args.defenses:
        nt, bd = retention.get((defense, "neurotoxin")), retention.get((defense, "backdoor"))
        if nt is None or bd is None:
            continue
        checks.append((f"{defense}: neurotoxin retains ASR(+10)/ASR(end) = {nt:.2f} >= "
                       f"backdoor's {bd:.2f}", nt >= bd))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
