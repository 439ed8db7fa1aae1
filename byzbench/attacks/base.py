"""The attack interface: every attack acts at one point of the round (DESIGN.md).

- ``data``: malicious clients train honestly on poisoned data (:meth:`Attack.poison_data`);
- ``update``: malicious clients replace their update rows (:meth:`Attack.poison_updates`);
- ``transport``: an attacker on the network alters signed messages in transit
  (:meth:`Attack.intercept`); the clients themselves are honest.

The engine calls every hook of an attack each round it is active; the defaults do nothing,
so an attack implements the hook of its stage (a backdoor with model replacement also
boosts its update). The engine guarantees that only malicious rows change in
:meth:`poison_updates` and that honest clients' data never reaches :meth:`poison_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, SerializationInfo, model_serializer, model_validator

from byzbench.crypto import SignedMessage
from byzbench.metrics import last_active_round
from byzbench.registry import ATTACKS, Component, Params

Stage = Literal["data", "update", "transport"]
Knowledge = Literal["full", "partial"]
ThreatLevel = Literal["full", "partial", "agnostic"]
# the names of the first releases, still accepted in grid files
KNOWLEDGE_ALIASES: dict[str, str] = {"omniscient": "full", "own": "partial"}


class AttackParams(Params):
    """Threat-model knobs shared by every attack."""

    start_round: int = Field(0, ge=0, description="first round (0-based) the attack acts in")
    every: int = Field(1, ge=1, description="act every k-th round from start_round (intermittent)")
    end_round: int | None = Field(
        None, ge=0, description="last round (0-based) the attack may act in; none: to the end "
                                "of the run; start_round = end_round is a single shot")

    @model_validator(mode="after")
    def _window(self) -> AttackParams:
        if self.end_round is not None and self.end_round < self.start_round:
            raise ValueError(f"end_round ({self.end_round}) is before start_round "
                             f"({self.start_round}); the attack acts in rounds "
                             "start_round..end_round")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Callable[[Any], dict[str, Any]], info: SerializationInfo
              ) -> dict[str, Any]:
        # end_round: none (the default) is left out of the dump, so the cell ids of grids
        # written before the attack window existed stay the same
        data = handler(self)
        if data.get("end_round", 0) is None:
            data.pop("end_round")
        return data


@dataclass(frozen=True)
class AttackSetup:
    """What an attack may know about the cell before round 0."""

    num_clients: int
    num_classes: int
    input_shape: tuple[int, ...]
    rounds: int
    seed: int
    defense_name: str
    device: torch.device


@dataclass
class AttackContext:
    """One round, as the attacker sees it.

    ``malicious`` marks the rows (of this round's participants) the attacker controls — for
    transport attacks, the clients whose messages it targets. ``reference`` marks the rows
    it may read as benign estimates: the honest rows under ``knowledge: full``, the
    malicious clients' own honestly-computed updates under ``knowledge: partial``.

    ``oracle`` is the cell's defense as a plain, side-effect-free callable: given a
    hypothetical ``[n, d]`` update matrix of this round it returns the defense's
    :class:`~byzbench.defenses.base.Verdict` (``aggregate``, ``weights``, ``flagged``)
    without changing the defense's state (attacks never import defenses). It knows the
    rule and its state, not the server's randomness. The engine hands it only to
    defense-aware attacks (:attr:`Attack.aware`); ``None`` otherwise and outside the engine.
    """

    round: int
    client_ids: torch.Tensor  # [n] long, global ids of this round's participants
    malicious: torch.Tensor   # [n] bool
    reference: torch.Tensor   # [n] bool
    generator: torch.Generator
    defense_name: str
    nonce: bytes | None = None  # the server's challenge for this round, when signing is on
    oracle: Callable[[torch.Tensor], Any] | None = None
    # the global parameters θ broadcast this round (every client receives them); None
    # outside the engine
    global_params: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.malicious.numel())

    @property
    def f(self) -> int:
        return int(self.malicious.sum())


@dataclass
class Interception:
    """What a transport attack delivers to the server, and which messages it touched."""

    updates: torch.Tensor                     # [n, d] payloads as received
    messages: list[SignedMessage] | None      # headers as received (None: signing is off)
    touched: torch.Tensor                     # [n] bool, ground truth for detection


class Attack(Component):
    """Base class of every attack; subclasses set ``stage`` and implement its hook."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = ""
    # True for attacks under which the designated malicious clients behave honestly: the
    # defense still assumes f of them, but detection ground truth marks nobody malicious.
    benign: ClassVar[bool] = False
    # True for defense-aware (adaptive) attacks: they query ``ctx.oracle``, the cell's
    # defense, to shape their rows. Only they receive it; the report ranks defenses by their
    # worst case and marks defenses that never faced one.
    aware: ClassVar[bool] = False
    # the scalar parameter that sets the attack's strength (the ``adaptive`` wrapper
    # searches it), or None
    strength: ClassVar[str | None] = None
    Params: ClassVar[type[AttackParams]] = AttackParams

    def setup(self, setup: AttackSetup) -> None:
        """Called once per cell before round 0."""
        self.cell = setup

    def active(self, round_: int) -> bool:
        """Whether the attack acts in ``round_`` (``start_round``, ``every``, ``end_round``),
        whatever its stage: the engine trains on poisoned data, rewrites updates and alters
        messages only in active rounds, and marks clients malicious only there."""
        p = self.params
        end = getattr(p, "end_round", None)
        return (round_ >= p.start_round and (end is None or round_ <= end)
                and (round_ - p.start_round) % p.every == 0)

    def last_active_round(self, rounds: int) -> int | None:
        """The last round of a ``rounds``-round run the attack acts in (None: never), as
        :func:`byzbench.metrics.last_active_round` defines it."""
        p = self.params
        return last_active_round(p.start_round, p.every, getattr(p, "end_round", None), rounds)

    @property
    def knowledge(self) -> Knowledge:
        """Which rows the attacker reads as benign: ``full`` (the honest rows of the
        round) or ``partial`` (the malicious clients' own honestly-computed updates)."""
        return getattr(self.params, "knowledge", "full")

    def plain_strength(self, ctx: AttackContext) -> float:
        """The value of :attr:`strength` this attack uses in ``ctx`` (a default resolved)."""
        if self.strength is None:
            raise ValueError(f"attack {self.name!r} declares no strength parameter")
        return float(getattr(self.params, self.strength))

    @property
    def threat_level(self) -> ThreatLevel:
        """The knowledge level in Fang et al.'s terms: ``full`` (honest updates + the
        rule), ``partial`` (own updates + the rule) or ``agnostic`` (the rule unknown)."""
        return self.knowledge if self.aware else "agnostic"

    def poison_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data stage: the malicious clients' training samples ``x`` [m, ...] and labels ``y``.

        Returns poisoned copies; must not modify the inputs in place.
        """
        return x, y

    def poison_client_data(self, x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Data stage, what the engine calls: as :meth:`poison_data`, with ``owner`` [m]
        (long) the index of the malicious client each sample belongs to — 0 for the
        malicious client with the lowest id, 1 for the next, … An attack whose clients
        poison differently (a distributed backdoor) overrides this; the default ignores
        ``owner``."""
        return self.poison_data(x, y, generator)

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """Update stage: returns an ``[n, d]`` matrix; only rows in ``ctx.malicious`` count."""
        return updates

    def intercept(self, updates: torch.Tensor, messages: Sequence[SignedMessage] | None,
                  ctx: AttackContext) -> Interception:
        """Transport stage: alter messages in transit; report which were touched."""
        return Interception(updates, list(messages) if messages is not None else None,
                            torch.zeros(updates.shape[0], dtype=torch.bool,
                                        device=updates.device))

    def secure_quantities(self, step: int, quantities: torch.Tensor, ctx: AttackContext
                          ) -> torch.Tensor | None:
        """Under secure aggregation: what the malicious clients submit to the round's
        ``step``-th secure sum, given the ``[n, k]`` quantities the protocol asked every
        client to compute (from its own, already poisoned, update); only rows in
        ``ctx.malicious`` count, each is clipped to the sum's bound. ``None`` (the default):
        they run the protocol honestly."""
        return None

    def triggered_testset(self, x: torch.Tensor, y: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Backdoors: the triggered test samples whose true label ≠ target, and the target
        labels, for the attack success rate (DESIGN.md). ``None`` for other attacks."""
        return None


ATTACKS.base = Attack
ATTACKS.required = ("poison_data", "poison_updates", "intercept", "setup", "active")
ATTACKS.override_one_of = ("poison_data", "poison_updates", "intercept")


@ATTACKS.register("none")
class NoAttack(Attack):
    """No attack: every client is honest. The baseline of attack impact."""

    stage: ClassVar[Stage] = "update"
    paper: ClassVar[str] = "none: the clean baseline that attack impact is measured against"
    benign: ClassVar[bool] = True
