"""The defense protocol: the round's verified updates in, a :class:`Verdict` out.

There is one hook. A defense implements ``aggregate(updates, ctx) -> Verdict`` for the rows
it is handed; the engine and a pipeline never call that hook directly but call the defense
(:meth:`Defense.__call__`), which runs the template every defense shares:

1. the incoming weights: ``ctx.weights`` when a pipeline passes them on, else the defense's
   :meth:`Defense.initial_weights` (uniform by default);
2. non-finite rows: rows holding NaN or ±Inf are Byzantine by definition. They are removed
   before the rule sees the round, each counts against the assumed budget (``f' = f − k`` for
   ``k`` such rows) and is flagged; a round with no finite row gives the zero update with
   everyone flagged. ``sees_nonfinite = True`` opts out (FedAvg: the undefended baseline
   propagates whatever it is sent);
3. the rule's verdict is validated (:func:`check_verdict`) and scattered back to the round's
   rows: weights 0 and flagged for the removed rows, per-row diagnostics NaN for them.

So a rule, built-in or plugin, only ever sees finite rows, and the README's plugin example is
NaN-safe without a line of its own. :meth:`Defense.preview` evaluates the same template
without side effects (on a scratch copy of a stateful defense): it is the oracle that
defense-aware attacks call.

A pipeline layer is just a defense whose output feeds the next (:mod:`.pipeline`). A verdict
may hand the next layer transformed rows (``passed``: norm clipping passes clipped rows) or
groups of rows (``passed`` with ``mixing``, the ``[m, n]`` share of each input row in each
passed row: bucketing, nearest-neighbour mixing); the pipeline maps the later layers' flags
and weights back to clients through ``mixing``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from byzbench.crypto import PublicKeyRegistry, SignedMessage, align_messages
from byzbench.defenses.geometry import finite_rows, normalized_weights, scatter_rows
from byzbench.registry import DEFENSES, Component, Params

if TYPE_CHECKING:
    from byzbench.privacy.secagg import Channel

# What a defense needs from the server's view under secure aggregation (Defense.secure_view):
#   sum         one secure weighted sum of the updates (FedAvg);
#   protocol    several secure sums of quantities each client computes from its own update
#               and what the server broadcast (RFA's Weiszfeld steps, centered clipping);
#   signatures  verifies each client's signature over its masked message (a pipeline layer
#               before one that aggregates; alone it aggregates by one secure sum);
#   plaintext   each client's update: it cannot run under secure aggregation.
SecureView = Literal["sum", "protocol", "signatures", "plaintext"]


@dataclass(frozen=True, kw_only=True)
class Privacy:
    """What a defense demands of the clients' privacy (stated by the defense; the report
    shows it beside what is measured). Keyword-only, so no fact can be given in the wrong
    slot."""

    needs_plaintext_updates: bool  # must see each client's update: no secure aggregation
    needs_server_data: bool        # needs clean data held by the server (e.g. FLTrust)
    keeps_client_state: bool       # keeps per-client history across rounds
    note: str = ""

    @classmethod
    def union(cls, parts: Iterable[tuple[str, Privacy]]) -> Privacy:
        """The facts of defenses run together (a pipeline): each fact is true when any part
        demands it; the notes are kept, each after its part's name."""
        named = list(parts)
        return cls(needs_plaintext_updates=any(p.needs_plaintext_updates for _, p in named),
                   needs_server_data=any(p.needs_server_data for _, p in named),
                   keeps_client_state=any(p.keeps_client_state for _, p in named),
                   note="; ".join(f"{name}: {p.note}" for name, p in named if p.note))


Diagnostic = float | int | str | torch.Tensor | Sequence[Any]


@dataclass(frozen=True)
class Verdict:
    """A defense's decision for one round of ``n`` rows and ``d`` coordinates.

    ``aggregate`` [d] is the update applied to the global model; ``weights`` [n] each row's
    effective weight in it (0 = excluded); ``flagged`` [n] bool the rows rejected as
    malicious, or ``None`` when the rule makes no per-client decision (detection "n/a").

    Keyword-only extras: ``diagnostics``, small per-round facts (a threshold, a score per
    row) — a value is a number, a string, a 0-d tensor, or one entry per row (an ``[n]``
    tensor or a length-``n`` list); ``passed`` [m, d] the rows handed to the next pipeline
    layer (default: the input rows); ``mixing`` [m, n] the share of each input row in each
    passed row, for a layer that groups rows (default: ``passed`` row i is input row i);
    ``verify_seconds``, time spent verifying signatures.
    """

    aggregate: torch.Tensor
    weights: torch.Tensor
    flagged: torch.Tensor | None
    _: KW_ONLY
    diagnostics: Mapping[str, Diagnostic] = field(default_factory=dict)
    passed: torch.Tensor | None = None
    mixing: torch.Tensor | None = None
    verify_seconds: float | None = None


class VerdictError(RuntimeError):
    """A defense returned a verdict that breaks the contract (shape, dtype, values)."""


class DefenseParams(Params):
    """Parameters shared by every defense."""

    assumed_fraction: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="malicious fraction the defender assumes (default: the true one)")


@dataclass(frozen=True)
class DefenseSetup:
    """What a defense knows about the cell before round 0."""

    num_clients: int               # clients in the federation
    clients_per_round: int         # participants per round (n of every round)
    f: int                         # malicious clients the defender assumes per round
    dim: int                       # d, the number of model parameters
    seed: int
    device: torch.device
    public_keys: PublicKeyRegistry | None = None
    # FLTrust-style defenses: given the global parameters [d] and the round, the server's own
    # update from training on its root dataset with the cell's local-training settings. A
    # pure function of its arguments: a preview and the round itself get the same update.
    server_update: Callable[[torch.Tensor, int], torch.Tensor] | None = None


@dataclass(frozen=True)
class RoundContext:
    """One round, as the server sees it (restricted to the rows a rule is handed)."""

    round: int
    client_ids: torch.Tensor       # [n] long, claimed ids of the rows (-1: a group of clients)
    num_samples: torch.Tensor      # [n] float, local dataset sizes
    f: int                         # malicious rows the defender assumes among these rows
    generator: torch.Generator     # the defense's seeded random stream for this round
    global_params: torch.Tensor    # [d] parameters the updates are relative to
    messages: Sequence[SignedMessage] | None = None  # signed headers, when signing is on
    nonce: bytes | None = None     # the server's challenge of this round
    weights: torch.Tensor | None = None  # [n] incoming weights (None: the defense's initial)
    dropped: int = 0               # rows of the round removed before these (non-finite, or
                                   # rejected by earlier pipeline layers)
    authentic: bool = False        # every row is its own client's, signed for this round and
                                   # nonce (an oracle's hypothetical round; ``messages`` None)

    def restrict(self, index: torch.Tensor, f: int | None = None,
                 dropped: int | None = None) -> RoundContext:
        """The context of rows ``index`` only (ids, sample counts, messages, weights
        renormalised), with ``f`` and ``dropped`` replaced where given."""
        idx = index.to(self.client_ids.device)
        messages = None
        if self.messages is not None:
            received = self.messages
            if len(received) != len(self.client_ids):  # dropped/injected: pair by claimed id
                received = align_messages(received, self.client_ids.tolist())
            messages = [received[i] for i in idx.tolist()]
        weights = None
        if self.weights is not None:
            weights = normalized_weights(self.weights[idx.to(self.weights.device)]
                                         ).to(self.weights.dtype)
        return replace(self, client_ids=self.client_ids[idx],
                       num_samples=self.num_samples[idx.to(self.num_samples.device)],
                       messages=messages, weights=weights,
                       f=self.f if f is None else f,
                       dropped=self.dropped if dropped is None else dropped)


class Defense(Component):
    """Base class of every defense: implement :meth:`aggregate` (see the module docstring).

    Declarations the engine and the report read (class attributes, or properties):
    ``paper`` (the citation), ``privacy`` (:class:`Privacy`), ``signature_scheme`` (the
    scheme clients must sign with, ``None``: no signing), ``stateless`` (``aggregate`` never
    changes the instance: :meth:`preview` may then run on it directly), ``sees_nonfinite``
    (the rule wants every row as sent), ``mixes_rows`` (a layer whose ``passed`` rows are
    groups of clients), ``secure_view`` (what it needs under secure aggregation, see
    :data:`SecureView`; all but ``plaintext`` implement :meth:`secure_aggregate`),
    ``trusts_authentic`` (its signature checks accept a context marked ``authentic``
    without messages, as every check of such rows would pass: the oracle of defense-aware
    attacks then signs nothing), ``lazy_imports`` (modules it imports on its first round;
    a cell's executor imports them before the cell's clock starts, so that no cell's time
    includes an import).
    """

    Params: ClassVar[type[DefenseParams]] = DefenseParams
    paper: ClassVar[str] = ""
    privacy: ClassVar[Privacy] = Privacy(needs_plaintext_updates=True,
                                         needs_server_data=False, keeps_client_state=False)
    signature_scheme: ClassVar[str | None] = None
    stateless: ClassVar[bool] = False
    sees_nonfinite: ClassVar[bool] = False
    mixes_rows: ClassVar[bool] = False
    secure_view: ClassVar[SecureView] = "plaintext"
    trusts_authentic: ClassVar[bool] = False
    lazy_imports: ClassVar[tuple[str, ...]] = ()
    cell: DefenseSetup | None = None

    def secure_requirement(self) -> str | None:
        """Why this defense cannot run under secure aggregation (the cell is then skipped
        with that reason, which starts with "secure aggregation:"), or ``None`` if it can."""
        if self.secure_view != "plaintext":
            return None
        name = self.name or type(self).__name__
        why = f" ({name}: {self.privacy.note})" if self.privacy.note else ""
        return (f"secure aggregation: {name} needs each client's plaintext update; the "
                f"server sees only masked vectors and their sum{why}")

    def secure_prepare(self, channel: Channel) -> None:
        """Under secure aggregation, what a pipeline layer before the aggregating one does to
        the round's channel (a signature layer makes the server verify masked messages)."""

    def secure_aggregate(self, channel: Channel, ctx: RoundContext) -> Verdict:
        """The rule under secure aggregation: a verdict from secure sums only
        (``channel.secure_sum``), never an individual update. ``ctx.weights`` holds the
        weights the server asks for (:meth:`initial_weights`); the verdict's ``weights``
        are those nominal weights (the effective ones are the clients' secret), and
        ``flagged`` is ``None``: the server sees no individual client."""
        raise NotImplementedError(f"{self.name} declares secure_view "
                                  f"'{self.secure_view}' but implements no secure_aggregate")

    @property
    def needs_signatures(self) -> bool:
        """Whether the engine must sign the clients' messages for this defense."""
        return self.signature_scheme is not None

    def requirement(self, n: int, f: int) -> str | None:
        """Why the rule cannot run with ``n`` clients per round, ``f`` of them assumed
        malicious (the cell is then skipped with that reason), or ``None`` if it can."""
        return None

    def root_data_size(self) -> int:
        """Clean training samples the server must hold out for itself (FLTrust)."""
        return 0

    def setup(self, setup: DefenseSetup) -> None:
        """Called once per cell before round 0; subclasses reset their state here."""
        self.cell = setup

    def initial_weights(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        """[n] the weights a round starts with when no pipeline passes any: uniform."""
        n = updates.shape[0]
        return torch.full((n,), 1.0 / max(n, 1), dtype=updates.dtype, device=updates.device)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        """The rule: a verdict for ``updates`` [n, d], every row finite (unless
        ``sees_nonfinite``), ``ctx.f`` malicious rows assumed among them, ``ctx.weights``
        the incoming weights."""
        raise NotImplementedError

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        """One round through the shared template (see the module docstring)."""
        return _run(self, updates, ctx)

    def preview(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        """The verdict this defense would return for ``updates``, leaving its state (and
        the caller's generator) untouched: the oracle of defense-aware attacks."""
        target = self if self.stateless else self._scratch_copy()
        generator = torch.Generator(device=ctx.generator.device)
        generator.set_state(ctx.generator.get_state())
        return _run(target, updates, replace(ctx, generator=generator))

    def _scratch_copy(self) -> Defense:
        """A deep copy of this defense whose state can change freely. What the cell shares
        with it (the setup: keys, the server's update function) is shared, not copied."""
        memo: dict[int, Any] = {}
        if self.cell is not None:
            memo[id(self.cell)] = self.cell
            for value in vars(self.cell).values():
                memo[id(value)] = value
        return copy.deepcopy(self, memo)


def _run(defense: Defense, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
    n, d = updates.shape
    if ctx.weights is None:
        ctx = replace(ctx, weights=defense.initial_weights(updates, ctx))
    if defense.sees_nonfinite:
        return check_verdict(defense, defense.aggregate(updates, ctx), n, d)
    ok = finite_rows(updates)
    if bool(ok.all()):
        return check_verdict(defense, defense.aggregate(updates, ctx), n, d)
    idx = torch.nonzero(ok).squeeze(1)
    m = int(idx.numel())
    if m == 0:
        return empty_verdict(updates)
    sub = ctx.restrict(idx, f=max(int(ctx.f) - (n - m), 0), dropped=ctx.dropped + n - m)
    verdict = check_verdict(defense, defense.aggregate(updates[idx], sub), m, d)
    return expand(verdict, idx, updates)


def empty_verdict(updates: torch.Tensor) -> Verdict:
    """Nothing usable this round: zero update, zero weights, every row flagged."""
    n, d = updates.shape
    return Verdict(aggregate=updates.new_zeros(d), weights=updates.new_zeros(n),
                   flagged=torch.ones(n, dtype=torch.bool, device=updates.device))


def expand(verdict: Verdict, index: torch.Tensor, updates: torch.Tensor) -> Verdict:
    """A verdict on rows ``index`` of ``updates`` [n, d] as a verdict on all ``n`` rows: the
    other rows get weight 0, are flagged, and read NaN (or None) in per-row diagnostics."""
    n = updates.shape[0]
    m = int(index.numel())
    flagged = verdict.flagged
    if flagged is None:
        flagged = torch.ones(n, dtype=torch.bool, device=updates.device)
        flagged[index] = False
    else:
        flagged = scatter_rows(flagged.to(updates.device), index, n, True)
    passed, mixing = verdict.passed, verdict.mixing
    if mixing is not None:
        full = mixing.new_zeros(mixing.shape[0], n)
        full[:, index.to(mixing.device)] = mixing
        mixing = full
    elif passed is not None:
        rows = updates.clone()
        rows[index] = passed.to(rows.dtype)
        passed = rows
    return replace(verdict,
                   weights=scatter_rows(verdict.weights, index.to(verdict.weights.device), n,
                                        0),
                   flagged=flagged,
                   diagnostics={k: _expand_value(v, index, m, n)
                                for k, v in verdict.diagnostics.items()},
                   passed=passed, mixing=mixing)


def _expand_value(value: Diagnostic, index: torch.Tensor, m: int, n: int) -> Diagnostic:
    if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == m:
        return scatter_rows(value.to(torch.float64), index.to(value.device), n, math.nan)
    if isinstance(value, (list, tuple)) and len(value) == m:
        out: list[Any] = [None] * n
        for pos, item in zip(index.tolist(), value):
            out[pos] = item
        return out
    return value


def _describe(defense: Defense) -> str:
    return f"defense '{defense.name or type(defense).__name__}'"


def check_verdict(defense: Defense, verdict: Any, n: int, d: int,
                  values: bool = True) -> Verdict:
    """``verdict`` if it keeps the contract for ``n`` rows and ``d`` coordinates, else a
    :class:`VerdictError` naming the defense and the field. ``values`` also checks that the
    weights are finite and non-negative (a device sync; shapes alone never wait)."""
    who = _describe(defense)
    if not isinstance(verdict, Verdict):
        raise VerdictError(f"{who} returned {type(verdict).__name__}, not a Verdict")

    def bad(field_name: str, problem: str) -> VerdictError:
        return VerdictError(f"{who} returned a Verdict whose {field_name} {problem}")

    def tensor(field_name: str, value: Any, shape: tuple[int, ...]) -> None:
        if not isinstance(value, torch.Tensor):
            raise bad(field_name, f"is {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise bad(field_name, f"has shape {tuple(value.shape)}, expected {shape}")

    tensor("aggregate", verdict.aggregate, (d,))
    if not verdict.aggregate.is_floating_point():
        raise bad("aggregate", f"has dtype {verdict.aggregate.dtype}, expected a float dtype")
    tensor("weights", verdict.weights, (n,))
    if verdict.flagged is not None:
        tensor("flagged", verdict.flagged, (n,))
        if verdict.flagged.dtype != torch.bool:
            raise bad("flagged", f"has dtype {verdict.flagged.dtype}, expected torch.bool "
                                 f"(or None for no per-client decision)")
    if verdict.mixing is not None:
        if verdict.passed is None:
            raise bad("mixing", "is set but passed is None (mixing maps passed rows to "
                                "input rows)")
        tensor("mixing", verdict.mixing, (verdict.passed.shape[0], n))
    if verdict.passed is not None:
        rows = verdict.passed.shape[0] if verdict.mixing is not None else n
        tensor("passed", verdict.passed, (rows, d))
    if not isinstance(verdict.diagnostics, Mapping):
        raise bad("diagnostics", f"is {type(verdict.diagnostics).__name__}, not a mapping")
    for key, value in verdict.diagnostics.items():
        if not isinstance(key, str):
            raise bad("diagnostics", f"has a key {key!r} that is not a string")
        if isinstance(value, torch.Tensor):
            if value.dim() > 1 or (value.dim() == 1 and value.numel() != n):
                raise bad(f"diagnostics['{key}']", f"has shape {tuple(value.shape)}, "
                                                   f"expected () or ({n},)")
        elif isinstance(value, (list, tuple)):
            if len(value) != n:
                raise bad(f"diagnostics['{key}']", f"has {len(value)} entries, expected {n}")
        elif not isinstance(value, (int, float, str)) and value is not None:
            raise bad(f"diagnostics['{key}']", f"is {type(value).__name__}; allowed: a "
                                               f"number, a string, a tensor or a list")
    if values and n > 0:
        w = verdict.weights
        if not bool((torch.isfinite(w) & (w >= 0)).all()):
            raise bad("weights", "holds negative or non-finite values")
    return verdict


DEFENSES.base = Defense
DEFENSES.required = ("aggregate", "setup", "requirement")
DEFENSES.override_one_of = ("aggregate",)

