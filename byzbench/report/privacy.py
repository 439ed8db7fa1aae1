"""A defense's privacy facts for the report: stated, and measured.

Stated: read from the registry (``Defense.privacy``) by the name in a cell's resolved
config. A ``pipeline`` combines its layers' facts with OR (the pipeline needs what any
layer needs); a name that no longer resolves gives "unknown".

Measured (:func:`measured_privacy_frame`, for results whose cells have a ``privacy`` block):
per defense and privacy setting (secure aggregation protocol, DP mode and ε), whether its
cells ran or were skipped (and why), the ε at δ its DP cells spent, the accuracy without
attack and under the attacks (mean over attacks, and the worst), the detection rate under
attack, and the secure aggregation time per round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from byzbench.registry import DEFENSES, SpecError, split_spec

FACTS = {
    "needs_plaintext_updates": "plaintext updates",
    "needs_server_data": "server data",
    "keeps_client_state": "client state",
}
UNKNOWN = "unknown"

Fact = bool | str  # True / False / "unknown"


def _layer_name_params(spec: Any) -> tuple[str | None, dict[str, Any]]:
    try:
        name, params, _ = split_spec(spec)
    except SpecError:
        return None, {}
    return name, params


def _either(values: list[Fact]) -> Fact:
    """OR over layers: True if any layer says so, unknown if any is unknown, else False
    (:meth:`Privacy.union` for specs that may not resolve: a report reads old results)."""
    if any(v is True for v in values):
        return True
    if any(v == UNKNOWN for v in values):
        return UNKNOWN
    return False


def privacy_facts(name: str | None, params: Mapping[str, Any] | None = None,
                  _depth: int = 0) -> dict[str, Fact]:
    """The three privacy facts of the defense ``name`` with ``params`` (its config)."""
    unknown: dict[str, Fact] = dict.fromkeys(FACTS, UNKNOWN)
    if not name or _depth > 8:
        return unknown
    params = params or {}
    if name == "pipeline":
        layers = params.get("layers")
        if not isinstance(layers, list) or not layers:
            return unknown
        per_layer = [spec_privacy_facts(spec, _depth + 1) for spec in layers]
        return {key: _either([facts[key] for facts in per_layer]) for key in FACTS}
    try:
        privacy = DEFENSES.get(name).privacy
    except Exception:  # unknown name, or a plugin path that no longer imports
        return unknown
    out: dict[str, Fact] = {}
    for key in FACTS:
        value = getattr(privacy, key, None)
        out[key] = bool(value) if isinstance(value, bool) else UNKNOWN
    return out


def spec_privacy_facts(spec: Any, _depth: int = 0) -> dict[str, Fact]:
    """The privacy facts of a defense written as a spec (a name, or ``{name, params}`` in
    any form :func:`~byzbench.registry.split_spec` reads); all unknown if malformed."""
    return privacy_facts(*_layer_name_params(spec), _depth=_depth)


def fact_text(value: Fact) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return UNKNOWN


# -- measured -------------------------------------------------------------------------------

PROTOCOLS = {"none": "", "secagg": "SecAgg", "secagg+": "SecAgg+"}
SECAGG_SKIP_PREFIX = "secure aggregation:"
MEASURED_COLUMNS = [
    "defense", "variant", "privacy", "secure_aggregation", "dp_mode", "sigma", "epsilon",
    "delta", "cells_done", "cells_skipped", "skip_reason", "clean_accuracy",
    "attacked_accuracy", "worst_accuracy", "worst_attack", "detection_rate", "flags",
    "secagg_ms", "n"]


def privacy_setting(config: Mapping[str, Any]) -> str:
    """A cell's privacy setting in words, from its resolved config: "none", "SecAgg+",
    "central DP ε=8", "SecAgg + local DP σ=1.2", …"""
    block = config.get("privacy") or {}
    parts = []
    protocol = PROTOCOLS.get(str(block.get("secure_aggregation", "none")),
                             str(block.get("secure_aggregation")))
    if protocol:
        parts.append(protocol)
    dp = block.get("dp") or {}
    mode = dp.get("mode", "none")
    if mode != "none":
        level = (f"ε={dp['epsilon']:g}" if dp.get("epsilon") is not None
                 else f"σ={dp.get('sigma'):g}" if dp.get("sigma") is not None else "")
        parts.append(f"{mode} DP {level}".strip())
    return " + ".join(parts) or "none"


def has_privacy(cells: pd.DataFrame) -> bool:
    """Whether any cell of the results has an active privacy block."""
    return any(privacy_setting(c) != "none" for c in cells["config"])


def _base_variant(axes: Mapping[str, Any], extra: list[str]) -> str:
    """The cell's extra-axis values other than the privacy ones (those are the setting)."""
    parts = [f"{k}={axes.get(k)}" for k in extra if not k.startswith("privacy")]
    return ", ".join(parts)


def _setting_key(config: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key of a privacy setting: none (ε = ∞) first, then secure aggregation alone,
    then DP central before local, each from the largest ε to the smallest (σ-given last)."""
    block = config.get("privacy") or {}
    protocol = list(PROTOCOLS).index(block.get("secure_aggregation", "none")) \
        if block.get("secure_aggregation", "none") in PROTOCOLS else len(PROTOCOLS)
    dp = block.get("dp") or {}
    mode = ["none", "central", "local"].index(dp.get("mode", "none")) \
        if dp.get("mode", "none") in ("none", "central", "local") else 3
    epsilon = dp.get("epsilon")
    return (mode, -epsilon if epsilon is not None else math.inf,
            dp.get("sigma") or 0.0, protocol)


def measured_privacy_frame(data: Any) -> pd.DataFrame:
    """One row per defense (+ non-privacy variant) and privacy setting of ``data`` (a
    :class:`~byzbench.report.data.ReportData`): see the module doc. Accuracy is the mean over
    seeds of each attack's final accuracy, then over the attacks (``worst``: the lowest);
    detection is micro-averaged over the attacked cells (``flags`` False: the defense flags
    nobody, detection n/a); ``epsilon`` is the mean over done DP cells of the ε spent by the
    run at ``delta``; ``secagg_ms`` the median over rounds of the secure aggregation time."""
    from byzbench.metrics import detection_rates

    cells = data.cells.copy()
    if cells.empty:
        return pd.DataFrame(columns=MEASURED_COLUMNS)
    cells["privacy"] = [privacy_setting(c) for c in cells["config"]]
    cells["secure_aggregation"] = [str((c.get("privacy") or {}).get("secure_aggregation",
                                                                     "none"))
                                   for c in cells["config"]]
    cells["dp_mode_config"] = [str(((c.get("privacy") or {}).get("dp") or {}).get("mode",
                                                                                  "none"))
                               for c in cells["config"]]
    cells["base_variant"] = [_base_variant(a, data.extra_axes) for a in cells["axes"]]
    cells["defense"] = cells["defense"].astype(object)
    cells["attack"] = cells["attack"].astype(object)
    for column in ("epsilon", "delta", "sigma"):
        cells[column] = (pd.to_numeric(cells[column]).astype(float) if column in cells
                         else np.nan)
    rounds = data.rounds
    secagg = (rounds.groupby("cell_id")["secagg_ms"].median()
              if "secagg_ms" in rounds and len(rounds) else pd.Series(dtype=float))
    cells["secagg_ms"] = cells["cell_id"].map(secagg).astype(float)

    rows = []
    keys = ["defense", "base_variant", "privacy"]
    defenses = data.cells["defense"]
    order = {"defense": list(defenses.cat.categories) if hasattr(defenses, "cat")
             else list(dict.fromkeys(defenses)),
             "base_variant": list(dict.fromkeys(cells["base_variant"]))}
    keyed = {}
    for setting, config in zip(cells["privacy"], cells["config"]):
        keyed.setdefault(setting, _setting_key(config))
    settings = sorted(keyed, key=lambda s: keyed[s])
    for (defense, variant, setting), group in sorted(
            cells.groupby(keys, sort=False),
            key=lambda kv: (order["defense"].index(kv[0][0]),
                            order["base_variant"].index(kv[0][1]),
                            settings.index(kv[0][2]))):
        done = group[group["status"] == "done"]
        skipped = group[group["status"] == "skipped"]
        clean = done[done["benign"]]
        attacked = done[~done["benign"]]
        per_attack = (attacked.dropna(subset=["accuracy"])
                      .groupby(["attack", "seed"])["accuracy"].mean()
                      .groupby(level="attack").mean())
        counts = attacked[["tp", "fp", "fn", "tn"]]
        flags = bool(len(attacked)) and not counts.isna().any(axis=None)
        detection = (detection_rates(*(int(counts[k].sum()) for k in ("tp", "fp", "fn", "tn"))
                                     )["detection_rate"] if flags else None)
        reason = next((str(r) for r in skipped["error"] if isinstance(r, str) and r), "")
        rows.append({
            "defense": defense, "variant": variant, "privacy": setting,
            "secure_aggregation": group["secure_aggregation"].iloc[0],
            "dp_mode": group["dp_mode_config"].iloc[0],
            "sigma": done["sigma"].mean() if len(done) else np.nan,
            "epsilon": done["epsilon"].mean() if len(done) else np.nan,
            "delta": done["delta"].mean() if len(done) else np.nan,
            "cells_done": len(done), "cells_skipped": len(skipped), "skip_reason": reason,
            "clean_accuracy": clean["accuracy"].mean() if len(clean) else np.nan,
            "attacked_accuracy": per_attack.mean() if len(per_attack) else np.nan,
            "worst_accuracy": per_attack.min() if len(per_attack) else np.nan,
            "worst_attack": per_attack.idxmin() if len(per_attack) else "",
            "detection_rate": np.nan if detection is None else detection,
            "flags": flags if len(attacked) else None,
            "secagg_ms": done["secagg_ms"].median() if len(done) else np.nan,
            "n": int(done["seed"].nunique()),
        })
    frame = pd.DataFrame(rows, columns=MEASURED_COLUMNS)
    frame["epsilon"] = frame["epsilon"].where(frame["dp_mode"] != "none", math.inf)
    return frame
