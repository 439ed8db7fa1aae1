"""A defense's privacy facts (stated by the defense, not measured), for the report.

Read from the registry (``Defense.privacy``) by the name in a cell's resolved config. A
``pipeline`` combines its layers' facts with OR (the pipeline needs what any layer needs);
a name that no longer resolves gives "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
