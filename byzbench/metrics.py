"""Detection, accuracy and cost metrics — one definition each, used everywhere (DESIGN.md).

Detection is counted per round over the round's participants from the defense's
``flagged`` against the ground-truth malicious set, then *micro-averaged*: counts are
summed over rounds (and over seeds in reports) before dividing.

- detection rate (recall) = ΣTP / Σ(TP + FN)
- false-positive rate      = ΣFP / Σ(FP + TN)
- precision                = ΣTP / Σ(TP + FP)
- F1                       = 2·precision·recall / (precision + recall)

A defense that makes no per-client decision (``flagged is None``) has no counts: its
detection metrics are ``None`` ("n/a"), never zero. A ratio with a zero denominator is
``None`` too (e.g. the detection rate of a cell with no malicious client).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import torch

COUNT_KEYS = ("tp", "fp", "fn", "tn")


def detection_counts(flagged: torch.Tensor | None, truth: torch.Tensor
                     ) -> dict[str, int | None]:
    """TP, FP, FN, TN of one round; all ``None`` when the defense flags nobody by design."""
    if flagged is None:
        return dict.fromkeys(COUNT_KEYS)
    flagged = flagged.bool().to(truth.device)
    truth = truth.bool()
    return {"tp": int((flagged & truth).sum()), "fp": int((flagged & ~truth).sum()),
            "fn": int((~flagged & truth).sum()), "tn": int((~flagged & ~truth).sum())}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def detection_rates(tp: int | None, fp: int | None, fn: int | None, tn: int | None
                    ) -> dict[str, float | None]:
    """Detection rate, FPR, precision and F1 from summed counts (None where undefined)."""
    if tp is None or fp is None or fn is None or tn is None:
        return {"detection_rate": None, "fpr": None, "precision": None, "f1": None}
    recall = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    f1 = None
    if recall is not None and precision is not None and recall + precision > 0:
        f1 = 2 * precision * recall / (precision + recall)
    elif recall == 0 or precision == 0:
        f1 = 0.0
    return {"detection_rate": recall, "fpr": _ratio(fp, fp + tn), "precision": precision,
            "f1": f1}


def sum_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int | None]:
    """Σ of each count over rounds; None if any round had no decision."""
    totals: dict[str, int | None] = dict.fromkeys(COUNT_KEYS, 0)
    for row in rows:
        for key in COUNT_KEYS:
            value = row.get(key)
            if value is None or totals[key] is None:
                totals[key] = None
            else:
                totals[key] += int(value)  # type: ignore[operator]
    return totals


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_rounds(rounds: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A cell's summary metrics from its round rows."""
    evals = [r for r in rounds if r.get("accuracy") is not None]
    last = evals[-1] if evals else {}
    counts = sum_counts(rounds)
    finite = [bool(r.get("finite", True)) for r in rounds]
    return {
        "accuracy": last.get("accuracy"),
        "loss": last.get("loss"),
        "asr": last.get("asr"),
        "best_accuracy": max((r["accuracy"] for r in evals), default=None),
        **counts,
        **detection_rates(counts["tp"], counts["fp"], counts["fn"], counts["tn"]),
        "agg_ms": _median(r.get("agg_ms") for r in rounds),
        "sign_ms": _median(r.get("sign_ms") for r in rounds),
        "verify_ms": _median(r.get("verify_ms") for r in rounds),
        "diverged": not all(finite),
        "diverged_round": finite.index(False) if not all(finite) else None,
        "n": _median(r.get("n") for r in rounds),
    }


# -- backdoor durability ---------------------------------------------------------------------

DURABILITY_LAGS = (10, 20)   # "ASR k rounds later"
RECOVERED_ASR = 0.2          # "rounds until ASR < 20%"
DURABILITY_KEYS = ("last_active_round", "asr_end", "asr_after_10", "asr_after_20",
                   "asr_recovery_rounds", "asr_horizon")


def last_active_round(start_round: int, every: int, end_round: int | None, rounds: int
                      ) -> int | None:
    """The last round r < ``rounds`` with start_round ≤ r ≤ end_round (end_round None: no
    bound) and (r − start_round) divisible by ``every``; None if the attack never acts."""
    last = rounds - 1 if end_round is None else min(end_round, rounds - 1)
    if last < start_round:
        return None
    return start_round + (last - start_round) // every * every


def durability(rounds: Iterable[Mapping[str, Any]], last_active: int | None
               ) -> dict[str, Any]:
    """How long a backdoor survives its attacker, from a cell's round rows (``round``,
    ``asr`` at evaluation rounds) and the attack's last active round L.

    An evaluation at round r measures the model after round r's update, so:

    - ``asr_end``: the ASR at the first evaluation round ≥ L (the end of the attack);
    - ``asr_after_10`` / ``asr_after_20``: the ASR at the first evaluation round ≥ L + 10
      (L + 20); None when the run has no evaluation that late;
    - ``asr_recovery_rounds``: e − L for the first evaluation round e ≥ L whose ASR is below
      :data:`RECOVERED_ASR` (0 when it already is at the end of the attack); None when the
      ASR never drops below it within the run;
    - ``asr_horizon``: the last evaluation round − L, how long the run watched after the
      attack (so a None recovery reads "not within asr_horizon rounds").

    Every value is None when L is None (the attack never acted) or no evaluation with an
    ASR lies at or after L.
    """
    out: dict[str, Any] = dict.fromkeys(DURABILITY_KEYS)
    out["last_active_round"] = last_active
    if last_active is None:
        return out
    evals = sorted((int(r["round"]), float(r["asr"])) for r in rounds
                   if r.get("asr") is not None and int(r["round"]) >= last_active)
    if not evals:
        return out
    out["asr_end"] = evals[0][1]
    for lag in DURABILITY_LAGS:
        later = [asr for round_, asr in evals if round_ >= last_active + lag]
        out[f"asr_after_{lag}"] = later[0] if later else None
    below = [round_ for round_, asr in evals if asr < RECOVERED_ASR]
    out["asr_recovery_rounds"] = below[0] - last_active if below else None
    out["asr_horizon"] = evals[-1][0] - last_active
    return out
