"""Layered defenses: run defenses in order, each on what survived the earlier ones.

A layer is an ordinary defense (:class:`~byzbench.defenses.base.Defense`); its verdict feeds
the next. Semantics (one round, ``n`` rows, after the base class removed non-finite rows —
unless the first layer sees them itself, as reputation does):

- weights start uniform (``weighting: samples`` starts them at the sample counts) and reach
  each layer as ``ctx.weights``: a layer that reweights (reputation multiplies them by the
  clients' reputations) returns the outgoing weights in its verdict, a layer that ignores
  them (median) returns its own effective weights, which then flow on;
- each layer sees only the rows that survived the earlier layers, with a
  :class:`RoundContext` restricted to those rows (ids, sample counts, signed messages); every
  row an earlier layer flagged counts against the assumed budget (``f`` minus the rows
  flagged so far, as non-finite rows do inside each rule), and each layer clamps ``f`` to
  what its rows support;
- rows survive a layer when it neither flags them nor gives them weight 0; a layer may pass
  transformed rows on (``Verdict.passed``: norm clipping passes clipped rows);
- a layer that groups rows (``Verdict.mixing`` [m, n']: bucketing, nearest-neighbour
  mixing) passes ``m`` group rows on, weighted by the weight of their members; later layers'
  flags and weights map back to clients through the membership: a client's weight is its
  share of the groups' weights, and a client is flagged when every group it is in is
  flagged. Layers that verify signatures or keep per-client state must come before such a
  layer (groups have no client id);
- the last layer's aggregate is the pipeline's aggregate, its weights are mapped back to the
  ``[n]`` rows (0 for rows dropped earlier and for flagged rows);
- ``flagged`` is the union of every layer's flags, or ``None`` when no layer made a
  per-client decision (a median after an ``ecdsa`` layer reports ecdsa's flags only);
- the layers' diagnostics are kept under ``"<position>.<layer>.<key>"``; the time spent
  verifying signatures is summed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationError, field_validator

from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    DefenseSetup,
    Diagnostic,
    Privacy,
    RoundContext,
    Verdict,
)
from byzbench.defenses.geometry import normalized_weights
from byzbench.registry import DEFENSES, UnknownComponentError, split_spec

if TYPE_CHECKING:
    from byzbench.privacy.secagg import Channel

LayerSpec = str | dict[str, Any]


def build_layer(spec: LayerSpec, index: int | None = None) -> Defense:
    """Construct one layer from its spec through the registry, with errors that name the
    layer's position and suggest a close name."""
    where = f"layer {index}" if index is not None else "layer"
    name, params, _ = split_spec(spec, "defense layer")
    try:
        cls = DEFENSES.get(name)
    except UnknownComponentError as exc:
        hint = f"; did you mean '{exc.suggestion}'?" if exc.suggestion else ""
        raise ValueError(f"{where}: unknown defense '{name}'{hint} "
                         f"(allowed: {', '.join(exc.allowed)})") from None
    if "assumed_fraction" in params:
        raise ValueError(f"{where} ({name}): set assumed_fraction on the pipeline, "
                         f"not on a layer (every layer gets the pipeline's f)")
    try:
        layer_params = cls.Params(**params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"{where} ({name}): invalid parameters: {problems}") from None
    return cls(layer_params)


class PipelineParams(DefenseParams):
    label: str | None = Field(None, max_length=200,
                              description="name shown in reports (default: layers joined by +)")
    layers: list[LayerSpec] = Field(
        default_factory=lambda: ["ecdsa", "multikrum"], min_length=1, max_length=32,
        description="defenses run in order: names or {name, <params>} mappings; the last "
                    "aggregates what survived")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="initial client weights: equal, or local sample counts")

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, layers: list[LayerSpec]) -> list[LayerSpec]:
        check_layer_order([build_layer(spec, i) for i, spec in enumerate(layers)])
        return layers


def check_layer_order(layers: Sequence[Defense]) -> None:
    """A ValueError when a layer that needs one client per row (it verifies signatures, or
    keeps state per client id) comes after a layer that groups rows."""
    mixer = next((i for i, layer in enumerate(layers) if layer.mixes_rows), None)
    if mixer is None:
        return
    for j in range(mixer + 1, len(layers)):
        layer = layers[j]
        why = ("verifies signatures" if layer.needs_signatures else
               "keeps state per client id" if layer.privacy.keeps_client_state else None)
        if why is not None:
            raise ValueError(f"layer {j} ({layer.name}) {why}, so it must come before layer "
                             f"{mixer} ({layers[mixer].name}), which mixes clients' rows into "
                             f"groups")


class Composite(Defense):
    """Runs ``self.layers`` in order (see the module docstring for the semantics)."""

    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=True, needs_server_data=False, keeps_client_state=False,
        note="the union of its layers'")
    layers: list[Defense]
    initial_weighting: str = "uniform"

    def _init_layers(self, layers: Sequence[Defense]) -> None:
        self.layers = list(layers)
        check_layer_order(self.layers)
        # instance attributes shadow the class declarations: they depend on the layers
        self.privacy = Privacy.union((layer.name, layer.privacy) for layer in self.layers)
        self.stateless = all(layer.stateless for layer in self.layers)
        self.sees_nonfinite = self.layers[0].sees_nonfinite
        self.trusts_authentic = all(layer.trusts_authentic for layer in self.layers
                                    if layer.needs_signatures)
        self.lazy_imports = tuple(dict.fromkeys(module for layer in self.layers
                                                for module in layer.lazy_imports))
        if self.secure_requirement() is not None:  # e.g. fedavg before geomed
            self.privacy = replace(self.privacy, needs_plaintext_updates=True)
        self.secure_view = ("plaintext" if self.secure_requirement() is not None else
                            "protocol" if any(layer.secure_view == "protocol"
                                              for layer in self.layers) else "sum")

    @property
    def label(self) -> str:
        return "+".join(layer.name for layer in self.layers)

    def _scratch_copy(self) -> Defense:
        """A copy whose stateful layers are scratch copies and whose stateless layers are
        shared: a pipeline's own attributes are its configuration, its state lives in its
        layers (SignGuard's copy 1.7× cheaper: ``benchmarks/bench_defenses.py --kernels``)."""
        clone = copy.copy(self)
        clone.layers = [layer if layer.stateless else layer._scratch_copy()
                        for layer in self.layers]
        return clone

    @property
    def signature_scheme(self) -> str | None:  # type: ignore[override]
        """The scheme of the first layer that verifies signatures (None if none does)."""
        return next((layer.signature_scheme for layer in self.layers
                     if layer.signature_scheme is not None), None)

    def requirement(self, n: int, f: int) -> str | None:
        for i, layer in enumerate(self.layers):
            reason = layer.requirement(n, f)
            if reason is not None:
                return f"layer {i} ({layer.name}): {reason}"
        return None

    def secure_requirement(self) -> str | None:
        """Under secure aggregation a pipeline runs when its last layer can, and every layer
        before it only checks the masked messages (signatures): any other layer hands
        per-client rows on, which the server never sees."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            reason = layer.secure_requirement()
            if reason is not None:
                return (f"secure aggregation: layer {i} ({layer.name}): "
                        f"{reason.removeprefix('secure aggregation: ')}")
            if i < last and layer.secure_view != "signatures":
                return (f"secure aggregation: layer {i} ({layer.name}) would hand each "
                        f"client's row to the next layer, but the server sees only masked "
                        f"vectors and their sum (only signature layers may come before the "
                        f"aggregating layer)")
        return None

    def secure_aggregate(self, channel: Channel, ctx: RoundContext) -> Verdict:
        for layer in self.layers[:-1]:
            layer.secure_prepare(channel)
        verdict = self.layers[-1].secure_aggregate(channel, ctx)
        checked = any(layer.secure_view == "signatures" for layer in self.layers[:-1])
        if checked and verdict.flagged is None:  # every masked message verified
            verdict = replace(verdict, flagged=torch.zeros(channel.n, dtype=torch.bool,
                                                           device=verdict.weights.device))
        return verdict

    def root_data_size(self) -> int:
        return max(layer.root_data_size() for layer in self.layers)

    def setup(self, setup: DefenseSetup) -> None:
        super().setup(setup)
        for layer in self.layers:
            layer.setup(setup)

    def initial_weights(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        if self.initial_weighting == "samples":
            return normalized_weights(ctx.num_samples.to(updates.device, torch.float64)
                                      ).to(updates.dtype)
        return super().initial_weights(updates, ctx)

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        n, d = updates.shape
        device, dtype = updates.device, updates.dtype
        rows = _Rows(ctx, n, device)
        w = ctx.weights.to(device, dtype)
        flagged = torch.zeros(n, dtype=torch.bool, device=device)
        decided = False
        diagnostics: dict[str, Diagnostic] = {}
        verify: float | None = None
        x, sub = updates, ctx
        for i, layer in enumerate(self.layers):
            out = layer(x, replace(sub, weights=w))
            for key, value in out.diagnostics.items():
                mapped = rows.diagnostic(value, x.shape[0])
                if mapped is not None:
                    diagnostics[f"{i}.{layer.name}.{key}"] = mapped
            if out.verify_seconds is not None:
                verify = (verify or 0.0) + out.verify_seconds
            if out.flagged is not None:
                decided = True
                flagged |= rows.clients_flagged(out.flagged.to(device))
            if i == len(self.layers) - 1:
                weights = rows.client_weights(out.weights.to(device)).to(dtype)
                weights[flagged] = 0.0
                return Verdict(aggregate=out.aggregate, weights=weights,
                               flagged=flagged if decided else None,
                               diagnostics=diagnostics, verify_seconds=verify)
            passed = out.passed if out.passed is not None else x
            if out.mixing is not None:
                keep = rows.mix(out.mixing.to(device, torch.float64),
                                out.weights.to(device, torch.float64))
                weights_in = rows.group_weights
            else:
                keep = out.weights > 0
                if out.flagged is not None:
                    keep &= ~out.flagged.to(device)
                weights_in = out.weights
            if not bool(keep.any()):
                return Verdict(aggregate=updates.new_zeros(d), weights=updates.new_zeros(n),
                               flagged=flagged if decided else None,
                               diagnostics=diagnostics, verify_seconds=verify)
            w = normalized_weights(weights_in[keep].to(torch.float64)).to(dtype)
            if bool(keep.all()) and out.mixing is None:
                x = passed
                continue
            x = passed[keep]
            rows.keep(keep)
            sub = rows.context(f=max(int(ctx.f) - int(flagged.sum()), 0))
        raise AssertionError("unreachable: a pipeline has at least one layer")


class _Rows:
    """Which clients the rows in flight stand for: while every row is one client, their
    indices ``alive``; once a layer grouped rows, ``member`` [rows, n], each row's share of
    every client."""

    def __init__(self, ctx: RoundContext, n: int, device: torch.device) -> None:
        self.ctx, self.n, self.device = ctx, n, device
        self.alive: torch.Tensor = torch.arange(n, device=device)
        self.member: torch.Tensor | None = None
        self.group_weights = torch.zeros(0, dtype=torch.float64, device=device)

    def clients_flagged(self, row_flags: torch.Tensor) -> torch.Tensor:
        """[n] clients flagged by a layer's row flags: a client is flagged when every row
        it is part of is flagged."""
        if self.member is None:
            out = torch.zeros(self.n, dtype=torch.bool, device=self.device)
            out[self.alive[row_flags]] = True
            return out
        inside = self.member > 0
        return inside[row_flags].any(dim=0) & ~inside[~row_flags].any(dim=0)

    def client_weights(self, row_weights: torch.Tensor) -> torch.Tensor:
        """[n] float64 each client's share of the rows' weights."""
        if self.member is None:
            out = torch.zeros(self.n, dtype=torch.float64, device=self.device)
            out[self.alive] = row_weights.to(torch.float64)
            return out
        return self.member.T @ row_weights.to(torch.float64)

    def diagnostic(self, value: Diagnostic, rows: int) -> Diagnostic | None:
        """A layer's diagnostic over the pipeline's ``n`` rows; a per-row value of grouped
        rows has no client to go to (None: dropped)."""
        per_row = ((isinstance(value, torch.Tensor) and value.dim() == 1)
                   or isinstance(value, (list, tuple)))
        if not per_row:
            return value
        if self.member is not None:
            return None
        if isinstance(value, torch.Tensor):
            out = torch.full((self.n,), float("nan"), dtype=torch.float64,
                             device=value.device)
            out[self.alive.to(value.device)] = value.to(torch.float64)
            return out
        mapped: list[Any] = [None] * self.n
        for pos, item in zip(self.alive.tolist(), value):
            mapped[pos] = item
        return mapped

    def mix(self, mixing: torch.Tensor, input_weights: torch.Tensor) -> torch.Tensor:
        """Rows become groups: ``mixing`` [m, rows] gives each group's members; returns
        [m] bool, the groups that carry weight."""
        if self.member is None:
            member = torch.zeros(self.alive.numel(), self.n, dtype=torch.float64,
                                 device=self.device)
            member[torch.arange(self.alive.numel(), device=self.device), self.alive] = 1.0
        else:
            member = self.member
        self.member = mixing @ member
        self.group_weights = mixing @ input_weights
        return self.group_weights > 0

    def keep(self, keep: torch.Tensor) -> None:
        if self.member is None:
            self.alive = self.alive[keep]
        else:
            self.member = self.member[keep]

    def context(self, f: int) -> RoundContext:
        """The round context of the rows in flight, with ``f`` assumed malicious among
        them."""
        ctx = self.ctx
        if self.member is None:
            return ctx.restrict(self.alive, f=f,
                                dropped=ctx.dropped + self.n - int(self.alive.numel()))
        inside = self.member > 0
        single = inside.sum(dim=1) == 1
        first = torch.argmax(inside.to(torch.int8), dim=1)
        ids = ctx.client_ids.to(self.device)
        client_ids = torch.where(single, ids[first], torch.full_like(ids[first], -1))
        samples = self.member @ ctx.num_samples.to(self.device, torch.float64)
        unseen = int((~inside.any(dim=0)).sum())
        return replace(ctx, client_ids=client_ids,
                       num_samples=samples.to(ctx.num_samples.dtype), messages=None,
                       f=f, dropped=ctx.dropped + unseen, weights=None)


@DEFENSES.register("pipeline")
class Pipeline(Composite):
    """A layered defense (the seed document's composition): run the listed defenses in
    order, each on the rows that survived the earlier ones with their weights; the last
    aggregates; flagged = the union of the layers' flags."""

    Params: ClassVar[type[PipelineParams]] = PipelineParams
    paper: ClassVar[str] = "composition of its layers (each cites its own paper)"

    def __init__(self, params: PipelineParams | None = None) -> None:
        super().__init__(params)
        self.initial_weighting = self.params.weighting
        self._init_layers([build_layer(spec, i) for i, spec in enumerate(self.params.layers)])

    @property
    def label(self) -> str:
        return self.params.label or "+".join(layer.name for layer in self.layers)
