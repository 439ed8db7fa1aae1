"""Compare two results directories cell by cell: which numbers moved, and by how much.

    python benchmarks/compare_results.py OLD_RESULTS NEW_RESULTS [--metrics accuracy,asr,...]

Cells are matched by id (a hash of the fully resolved configuration), so the two runs must
come from the same grid. For every metric it prints how many matched cells are bit-identical,
how many differ and the largest difference, then lists the cells that moved (attack, defense,
fraction, seed, old → new). Used to show that a refactor leaves every number unchanged.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byzbench.store import ResultsStore  # noqa: E402

METRICS = ("accuracy", "loss", "asr", "tp", "fp", "fn", "tn", "diverged")


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--show", type=int, default=20, help="moved cells listed at most")
    args = parser.parse_args(argv)
    metrics = args.metrics.split(",")
    frames = []
    for directory in (args.old, args.new):
        with ResultsStore.open(directory) as store:
            frames.append(store.cells_frame().set_index("cell_id"))
    old, new = frames
    common = old.index.intersection(new.index)
    print(f"cells: {len(old)} old, {len(new)} new, {len(common)} matched by id")
    status_moved = [c for c in common if old.at[c, "status"] != new.at[c, "status"]]
    print(f"status changed: {len(status_moved)}")
    moved: dict[str, list[str]] = {}
    for metric in metrics:
        diffs = []
        for cell in common:
            a, b = old.at[cell, metric], new.at[cell, metric]
            a = None if a is None or (isinstance(a, float) and math.isnan(a)) else a
            b = None if b is None or (isinstance(b, float) and math.isnan(b)) else b
            if not _same(a, b):
                diffs.append(cell)
                delta = (abs(float(a) - float(b)) if a is not None and b is not None
                         else float("inf"))
                moved.setdefault(cell, []).append(f"{metric} {a} → {b} (Δ {delta:.3g})")
        print(f"{metric:>10}: {len(common) - len(diffs)} identical, {len(diffs)} differ")
    for cell in list(moved)[:args.show]:
        row = old.loc[cell]
        print(f"  {row['attack']} / {row['defense']} / {row['malicious_fraction']} / "
              f"seed {row['seed']}: " + "; ".join(moved[cell]))
    print(f"cells with any moved number: {len(moved)} of {len(common)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
