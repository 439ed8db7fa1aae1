"""The bucketing paper's published numbers, read from the authors' repository, as the
``table:`` entries of configs/references/bucketing.yaml.

Karimireddy, He & Jaggi (ICLR 2022) committed their result files to
github.com/epfml/byzantine-robust-noniid-optimizer: the LaTeX tables their scripts write
(``outputs/exp2/all/output/exp2.tex`` and ``exp2_bucketing.tex``: the mimic attack, IID and
non-IID columns) and the data behind their exp3 figure (``outputs/exp3/all/output/exp3.csv``:
test accuracy every 30 iterations for BF, LF, mimic, IPM, ALIE × KRUM, CM, RFA, CClip ×
bucketing s ∈ {0, 2} × momentum ∈ {0, 0.9} × 3 seeds). This script

- reads the non-IID column of the two exp2 tables as printed;
- reduces exp3.csv with the authors' own table rule (exp2.py ``--plot``: per seed the mean
  of the last 5 evaluations, i.e. iterations 480–600, then the mean over seeds), momentum 0
  only (the setting byzbench can express);
- checks that rule on the one overlap: exp3's mimic runs must give the exp2 table's
  non-IID values to the printed two decimals (exits non-zero otherwise);
- prints the YAML entries (exp2 table for mimic, exp3 data for BF, LF, IPM, ALIE).

    git clone https://github.com/epfml/byzantine-robust-noniid-optimizer AUTHORS
    python benchmarks/bucketing_reference.py AUTHORS          # a work tree
    python benchmarks/bucketing_reference.py AUTHORS.git --commit 0e27349   # a bare git dir
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = "github.com/epfml/byzantine-robust-noniid-optimizer"
EXP2 = "outputs/exp2/all/output/{}.tex"
EXP3 = "outputs/exp3/all/output/exp3.csv"
# the authors' aggregator names → (byzbench label without bucketing, with bucketing s = 2)
DEFENSES = {"Avg": ("fedavg", None), "KRUM": ("KRUM", "bucketing+krum"),
            "CM": ("CM", "bucketing+median"), "RFA": ("RFA", "bucketing+geomed"),
            "CClip": ("CClip", "bucketing+centered_clipping")}
TEX_ROWS = {r"\textsc{Avg}": "Avg", r"\krum": "KRUM", r"\cm": "CM", r"\rfa": "RFA",
            r"\cclip": "CClip"}
CELL = re.compile(r"\$([0-9.]+)\\!\\pm\\!([0-9.]+)\$")


def read(root: Path, path: str, commit: str) -> str:
    """A file of the authors' repository: from a work tree, else ``git show`` in a git dir."""
    if (root / path).is_file():
        return (root / path).read_text()
    out = subprocess.run(["git", "--git-dir", str(root), "show", f"{commit}:{path}"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{root}: cannot read {path} at {commit}: {out.stderr.strip()}")
    return out.stdout


def exp2_noniid(tex: str) -> dict[str, float]:
    """The {\\noniid} column (the second value of each row) of an exp2 table, as printed."""
    values = {}
    for line in tex.splitlines():
        name = line.split("&")[0].strip()
        cells = CELL.findall(line)
        if name in TEX_ROWS and len(cells) == 2:
            values[TEX_ROWS[name]] = float(cells[1][0])
    return values


def exp3_table(csv: str) -> pd.DataFrame:
    """Momentum-0 exp3 runs reduced by the authors' table rule: per seed the mean of the
    last 5 evaluations, then the mean over seeds (and the number of seeds)."""
    data = pd.read_csv(io.StringIO(csv))
    data = data[data[r"$\beta$"] == 0.0].sort_values("Iterations")
    per_seed = (data.groupby(["ATK", "AGG", "s", "seed"])["Accuracy (%)"]
                .apply(lambda a: a.tail(5).mean()).reset_index())
    return (per_seed.groupby(["ATK", "AGG", "s"])["Accuracy (%)"]
            .agg(["mean", "count"]).reset_index())


def entry(table: str, column: str, attack: str, defense: str, claimed: str, value: float,
          source: str) -> str:
    return (f'  - {{table: "{table}", column: "{column}", attack: {attack}, '
            f'defense: {defense}, claimed_as: "{claimed}", metric: accuracy, '
            f'value: "{value:.2f}%",\n     source: "{source}"}}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the authors' repository: work tree or git dir")
    ap.add_argument("--commit", default="HEAD", help="commit to read from a git dir")
    args = ap.parse_args()

    plain = exp2_noniid(read(args.root, EXP2.format("exp2"), args.commit))
    bucketed = exp2_noniid(read(args.root, EXP2.format("exp2_bucketing"), args.commit))
    exp3 = exp3_table(read(args.root, EXP3, args.commit))

    # the rule check: exp3's mimic (momentum 0) must reproduce exp2.tex's non-IID column
    mismatches = []
    for _, row in exp3[exp3["ATK"] == "mimic"].iterrows():
        printed = (bucketed if str(row["s"]) == "2" else plain)[row["AGG"]]
        if f"{row['mean']:.2f}" != f"{printed:.2f}":
            mismatches.append(f"{row['AGG']} s={row['s']}: exp3 {row['mean']:.2f} vs "
                              f"exp2.tex {printed:.2f}")
    print(f"# rule check: exp3 mimic (momentum 0) vs exp2.tex non-IID column: "
          f"{'identical to 2 decimals (8 cells)' if not mismatches else 'MISMATCH'}")
    if mismatches:
        sys.exit("\n".join(mismatches))

    at = f"{REPO.removeprefix('github.com/')}@{args.commit[:7]}"
    lines = []
    for name, (label, label_b) in DEFENSES.items():
        for values, defense, s in ((plain, label, 0), (bucketed, label_b, 2)):
            if defense is None:
                continue
            file = EXP2.format("exp2" if s == 0 else "exp2_bucketing")
            lines.append(entry("authors' exp2 table (mimic)", "non-IID", "mimic", defense,
                               f"{name} (s={s})", values[name],
                               f"{at}: {file}, row {name}, column non-IID, as printed"))
    for _, row in exp3[exp3["ATK"] != "mimic"].iterrows():
        name, s = row["AGG"], int(row["s"])
        label, label_b = DEFENSES[name]
        lines.append(entry("authors' exp3 figure data", row["ATK"], row["ATK"],
                           label if s == 0 else label_b, f"{name} (s={s})", row["mean"],
                           f"{at}: {EXP3}, ATK={row['ATK']} AGG={name} s={s} beta=0; "
                           f"mean over {int(row['count'])} seeds of the last 5 evaluations' "
                           f"mean"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
