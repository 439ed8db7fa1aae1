"""Conformance checks every defense and attack must pass, byzbench's own and plugins alike.

    from byzbench.testing import check_attack, check_defense
    check_defense(MyDefense)                 # raises ConformanceError naming what is wrong
    check_defense(MyDefense, {"factor": 2})  # with parameters
    check_attack(MyAttack)

:func:`check_defense` checks, on small seeded rounds (``n`` honest rows around a common
direction plus outliers, real signatures when the defense verifies them, a server update
when it holds root data):

- metadata: a docstring that states the rule, a ``paper`` citation, a pydantic ``Params``
  whose every field has a description and that rejects unknown keys, a :class:`Privacy`;
- the verdict keeps the contract (shapes, dtypes, finite non-negative weights, diagnostics);
- one NaN, +Inf, −Inf, ±1e30 or ±3e38 row never gives a non-finite aggregate (unless the
  rule declares ``sees_nonfinite``, as the undefended FedAvg does), and a NaN/Inf row is
  flagged with weight 0;
- permuting the rows (with their ids, sample counts and signatures) permutes the flags and
  weights and leaves the aggregate unchanged, on a round whose outliers are unmistakable;
- :meth:`~byzbench.defenses.base.Defense.preview` leaves the defense's state unchanged and
  returns what the round itself returns; a defense that declares ``stateless`` does not
  change its attributes in a round either;
- secure aggregation: a defense that cannot run under it says why in a reason starting
  with "secure aggregation:"; one that can runs :meth:`Defense.secure_aggregate` on a real
  :class:`~byzbench.privacy.secagg.SecureChannel` (signed masked messages when it verifies
  signatures) and its verdict keeps the contract with a finite aggregate.

:func:`check_attack` checks metadata the same way, then runs the attack's hook for its stage
on a small round: shapes and dtypes of what it returns, inputs left untouched, the same
output for the same seed, (update attacks) that it runs with and without the defense
oracle, (data attacks) that the engine's per-client hook ``poison_client_data`` keeps the
same contract, and that ``active`` honours the attack window (``start_round``, ``every``,
``end_round``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from byzbench.attacks.base import Attack, AttackContext, AttackSetup, Interception
from byzbench.crypto import ClientKeyring
from byzbench.defenses.base import (
    Defense,
    DefenseSetup,
    Privacy,
    RoundContext,
    Verdict,
    VerdictError,
    check_verdict,
)

BAD_VALUES: tuple[float, ...] = (float("nan"), float("inf"), -float("inf"), 1e30, -1e30,
                                 3e38, -3e38)


class ConformanceError(AssertionError):
    """A component that breaks byzbench's contract; the message says which check and why."""


def _fail(who: str, check: str, why: str) -> ConformanceError:
    return ConformanceError(f"{who}: {check}: {why}")


def _name(cls: type) -> str:
    return getattr(cls, "name", "") or f"{cls.__module__}.{cls.__qualname__}"


def _check_metadata(cls: type, base: type, params: Mapping[str, Any]) -> None:
    who = _name(cls)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise _fail(who, "class", f"is not a subclass of {base.__module__}.{base.__name__}")
    doc = (cls.__doc__ or "").strip()
    if len(doc) < 40 or cls.__doc__ == base.__doc__:
        raise _fail(who, "docstring", "state the algorithm in a docstring of its own "
                                      "(at least 40 characters)")
    if not str(getattr(cls, "paper", "")).strip():
        raise _fail(who, "paper", "set the class attribute 'paper' to the citation")
    model = cls.Params
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise _fail(who, "Params", "is not a pydantic model")
    for field_name, info in model.model_fields.items():
        if not info.description:
            raise _fail(who, "Params", f"field '{field_name}' has no description")
    try:
        model(**params, no_such_parameter_xyz=1)
    except ValidationError:
        pass
    else:
        raise _fail(who, "Params", "accepts an unknown key (derive from byzbench's Params, "
                                   "which forbids extra keys)")
    try:
        model(**params)
    except ValidationError as exc:
        raise _fail(who, "Params", f"rejects the parameters given to the check: {exc}"
                    ) from None


# ------------------------------------------------------------------------------ defenses


class _Round:
    """A seeded round for one defense: honest rows, signatures, context."""

    def __init__(self, defense: Defense, n: int, d: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        direction = torch.randn(d, generator=g)
        self.honest = direction + 0.1 * torch.randn(n, d, generator=g)
        self.n, self.d = n, d
        self.samples = torch.randint(20, 60, (n,), generator=g).to(torch.float32)
        self.scheme = defense.signature_scheme
        self.keys = ClientKeyring(range(n), self.scheme) if self.scheme else None
        self.mean = self.honest.mean(dim=0)

    def setup(self, defense: Defense, f: int) -> Defense:
        mean = self.mean
        defense.setup(DefenseSetup(
            num_clients=self.n, clients_per_round=self.n, f=f, dim=self.d, seed=0,
            device=torch.device("cpu"),
            public_keys=self.keys.public_registry() if self.keys else None,
            server_update=(lambda theta, round_: mean.clone())
            if defense.root_data_size() > 0 else None))
        return defense

    def context(self, rows: torch.Tensor, f: int, order: torch.Tensor | None = None,
                round_: int = 0) -> RoundContext:
        ids = torch.arange(self.n) if order is None else order
        messages, nonce = None, None
        if self.keys is not None:
            nonce = b"conformance-" + bytes([round_ % 256])
            messages, _ = self.keys.sign_round(ids.tolist(), round_, nonce, rows)
        return RoundContext(round=round_, client_ids=ids, num_samples=self.samples[ids], f=f,
                            generator=torch.Generator().manual_seed(1234 + round_),
                            global_params=torch.zeros(self.d), messages=messages,
                            nonce=nonce)


def _build(cls: type[Defense], params: Mapping[str, Any]) -> Defense:
    return cls(cls.Params(**params))


def _pick_size(cls: type[Defense], params: Mapping[str, Any], f: int) -> int | None:
    probe = _build(cls, params)
    for n in (10, 12, 16, 20, 30, 40):
        if probe.requirement(n, f) is None:
            return n
    return None


def _same(a: Any, b: Any, depth: int = 0) -> bool:
    """Deep equality of defense state: tensors and arrays element-wise (NaN equal to NaN),
    containers and plain objects recursively."""
    if depth > 12:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype
                and bool(torch.equal(torch.nan_to_num(a.detach().cpu()),
                                     torch.nan_to_num(b.detach().cpu()))))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind
                                                               in "fc")))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth + 1) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, depth + 1) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, (int, float, str, bytes, bool, type(None))):
        return a == b or (isinstance(a, float) and a != a and b != b)
    if hasattr(a, "__dict__") and not isinstance(a, (BaseModel, type)):
        return _same(vars(a), vars(b), depth + 1)
    return True  # opaque shared objects (setup, keys, params): not the defense's state


def _state(defense: Defense) -> dict[str, Any]:
    shared = {"cell", "params", "public_keys"}
    return {k: v for k, v in vars(defense).items() if k not in shared}


def _verdicts_match(a: Verdict, b: Verdict) -> str | None:
    if not torch.allclose(a.aggregate.double(), b.aggregate.double(), rtol=1e-4, atol=1e-5,
                          equal_nan=True):
        return "aggregate differs"
    if not torch.allclose(a.weights.double(), b.weights.double(), rtol=1e-4, atol=1e-5):
        return "weights differ"
    fa, fb = a.flagged, b.flagged
    if (fa is None) != (fb is None) or (fa is not None and not torch.equal(fa, fb)):
        return "flagged differs"
    return None


def check_defense(cls: type[Defense], params: Mapping[str, Any] | None = None, *,
                  permutation: bool = True, seed: int = 0) -> None:
    """Raise :class:`ConformanceError` if defense ``cls`` (with ``params``) breaks the
    contract (see the module docstring); ``permutation=False`` skips the permutation check
    for a rule that depends on the order of the rows by design."""
    params = dict(params or {})
    _check_metadata(cls, Defense, params)
    who = _name(cls)
    if not isinstance(getattr(cls, "privacy", None), Privacy):
        raise _fail(who, "privacy", "declare 'privacy' as a byzbench.defenses.base.Privacy")
    f = 1
    n = _pick_size(cls, params, f)
    if n is None:
        raise _fail(who, "requirement", "refuses every round size from 10 to 40 with f=1")
    d = 16
    template = _build(cls, params)
    rnd = _Round(template, n, d, seed)

    def run(defense: Defense, rows: torch.Tensor, ctx: RoundContext) -> Verdict:
        try:
            verdict = defense(rows, ctx)
            return check_verdict(defense, verdict, rows.shape[0], d)
        except VerdictError as exc:
            raise _fail(who, "verdict", str(exc)) from None

    # a clean round
    x = rnd.honest.clone()
    run(rnd.setup(_build(cls, params), f), x, rnd.context(x, f))

    # one bad row among honest ones
    for bad in BAD_VALUES:
        y = rnd.honest.clone()
        y[n - 1] = bad
        v = run(rnd.setup(_build(cls, params), f), y, rnd.context(y, f))
        if not cls.sees_nonfinite and not bool(torch.isfinite(v.aggregate).all()):
            raise _fail(who, "bad rows", f"a row of {bad} gives a non-finite aggregate")
        if bad != bad or abs(bad) == float("inf"):
            if not cls.sees_nonfinite and (v.flagged is None or not bool(v.flagged[n - 1])
                                           or float(v.weights[n - 1]) != 0.0):
                raise _fail(who, "bad rows", f"a row of {bad} is not flagged with weight 0")

    # permutation: an unmistakable round (two far outliers), rows shuffled
    if permutation:
        y = rnd.honest.clone()
        y[0] = -10.0 * rnd.mean
        y[n - 1] = 10.0 * rnd.mean + 5.0
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7))
        a = run(rnd.setup(_build(cls, params), f), y, rnd.context(y, f))
        b = run(rnd.setup(_build(cls, params), f), y[order], rnd.context(y[order], f, order))
        permuted = Verdict(aggregate=a.aggregate, weights=a.weights[order],
                           flagged=None if a.flagged is None else a.flagged[order])
        problem = _verdicts_match(permuted, b)
        if problem:
            raise _fail(who, "permutation", f"permuting the rows: {problem}")

    # preview: no side effects, same answer as the round itself
    first, second = rnd.honest.clone(), rnd.honest.clone()
    second[n - 1] = -5.0 * rnd.mean
    if cls.stateless:
        defense = rnd.setup(_build(cls, params), f)
        before = copy.deepcopy(_state(defense))
        run(defense, second, rnd.context(second, f))
        if not _same(before, _state(defense)):
            raise _fail(who, "stateless", "declares stateless = True but a round changed "
                                          "its attributes")
    probed = rnd.setup(_build(cls, params), f)
    twin = rnd.setup(_build(cls, params), f)
    for defense in (probed, twin):
        run(defense, first, rnd.context(first, f, round_=0))
    before = copy.deepcopy(_state(probed))
    ctx = rnd.context(second, f, round_=1)
    try:
        previewed = probed.preview(second, ctx)
        check_verdict(probed, previewed, n, d)
    except VerdictError as exc:
        raise _fail(who, "preview", str(exc)) from None
    if not _same(before, _state(probed)):
        raise _fail(who, "preview", "changed the defense's state (a preview must not)")
    real = run(twin, second, replace(ctx, generator=torch.Generator().manual_seed(1235)))
    after_probe = run(probed, second, rnd.context(second, f, round_=1))
    problem = _verdicts_match(previewed, real) or _verdicts_match(after_probe, real)
    if problem:
        raise _fail(who, "preview", f"the preview and the round itself disagree: {problem}")
    _check_secure(cls, params, rnd, f, who)


def _check_secure(cls: type[Defense], params: Mapping[str, Any], rnd: _Round, f: int,
                  who: str) -> None:
    from byzbench.config import SecAggConfig
    from byzbench.privacy.secagg import SecureChannel

    defense = rnd.setup(_build(cls, params), f)
    reason = defense.secure_requirement()
    if reason is not None:
        if not reason.startswith("secure aggregation: "):
            raise _fail(who, "secure aggregation", f"a skip reason must start with "
                                                   f"'secure aggregation: ', got {reason!r}")
        return
    x = rnd.honest.clone()
    ctx = rnd.context(x, f)
    ctx = replace(ctx, messages=None, weights=defense.initial_weights(x.new_empty(rnd.n, 0),
                                                                      ctx))
    channel = SecureChannel(x, SecAggConfig(range=10.0), "secagg", range(rnd.n), 0,
                            np.random.default_rng(0), keyring=rnd.keys, nonce=b"conformance")
    try:
        verdict = check_verdict(defense, defense.secure_aggregate(channel, ctx), rnd.n, rnd.d)
    except VerdictError as exc:
        raise _fail(who, "secure aggregation", str(exc)) from None
    if not bool(torch.isfinite(verdict.aggregate).all()):
        raise _fail(who, "secure aggregation", "secure_aggregate gave a non-finite aggregate")


# ------------------------------------------------------------------------------- attacks


def _attack_context(n: int, f: int, seed: int, oracle: Callable[[torch.Tensor], Any] | None
                    ) -> AttackContext:
    malicious = torch.zeros(n, dtype=torch.bool)
    malicious[:f] = True
    return AttackContext(round=0, client_ids=torch.arange(n), malicious=malicious,
                         reference=~malicious,
                         generator=torch.Generator().manual_seed(seed),
                         defense_name="fedavg", oracle=oracle)


def _mean_oracle(rows: torch.Tensor) -> Verdict:
    n = rows.shape[0]
    weights = torch.full((n,), 1.0 / n, dtype=rows.dtype)
    return Verdict(aggregate=weights @ rows, weights=weights, flagged=None)


def check_attack(cls: type[Attack], params: Mapping[str, Any] | None = None, *,
                 seed: int = 0) -> None:
    """Raise :class:`ConformanceError` if attack ``cls`` (with ``params``) breaks the
    contract (see the module docstring)."""
    params = dict(params or {})
    _check_metadata(cls, Attack, params)
    who = _name(cls)
    if cls.stage not in ("data", "update", "transport"):
        raise _fail(who, "stage", f"is {cls.stage!r}; allowed: data, update, transport")
    n, f, d = 10, 3, 16

    def build() -> Attack:
        attack = cls(cls.Params(**params))
        attack.setup(AttackSetup(num_clients=n, num_classes=10, input_shape=(1, 8, 8),
                                 rounds=5, seed=seed, defense_name="fedavg",
                                 device=torch.device("cpu")))
        return attack

    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g)
    if cls.stage == "update":
        outputs = []
        # a defense-aware attack is given an oracle always (the engine does the same)
        oracles = (_mean_oracle,) * 3 if cls.aware else (None, _mean_oracle, _mean_oracle)
        for oracle in oracles:
            given = updates.clone()
            out = build().poison_updates(given, _attack_context(n, f, seed, oracle))
            if not torch.equal(given, updates):
                raise _fail(who, "poison_updates", "changed its input in place")
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, d):
                raise _fail(who, "poison_updates", f"must return an [{n}, {d}] tensor")
            if not out.is_floating_point():
                raise _fail(who, "poison_updates", "must return a float tensor")
            outputs.append(out)
        if not torch.equal(torch.nan_to_num(outputs[1]), torch.nan_to_num(outputs[2])):
            raise _fail(who, "poison_updates", "differs between two runs with the same seed")
    elif cls.stage == "data":
        x = torch.rand(12, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (12,), generator=g)
        x0, y0 = x.clone(), y.clone()
        owner = torch.arange(12) % 3
        hooks = {"poison_data": lambda a, gen: a.poison_data(x, y, gen),
                 "poison_client_data": lambda a, gen: a.poison_client_data(x, y, owner, gen)}
        for hook, call in hooks.items():
            runs = [call(build(), torch.Generator().manual_seed(seed)) for _ in range(2)]
            if not (torch.equal(x, x0) and torch.equal(y, y0)):
                raise _fail(who, hook, "changed its inputs in place")
            (px, py), (qx, qy) = runs
            if px.shape[1:] != x.shape[1:] or px.shape[0] != py.shape[0]:
                raise _fail(who, hook, "must return samples shaped like the input, "
                                       "one label each")
            if not (torch.equal(px, qx) and torch.equal(py, qy)):
                raise _fail(who, hook, "differs between two runs with the same seed")
    else:
        keys = ClientKeyring(range(n))
        messages, _ = keys.sign_round(list(range(n)), 0, b"conformance", updates)
        ctx = replace(_attack_context(n, f, seed, None), nonce=b"conformance")
        out = build().intercept(updates.clone(), messages, ctx)
        if not isinstance(out, Interception):
            raise _fail(who, "intercept", "must return an Interception")
        if tuple(out.updates.shape) != (n, d) or out.messages is None \
                or len(out.messages) != n:
            raise _fail(who, "intercept", f"must deliver {n} rows and {n} messages")
        if tuple(out.touched.shape) != (n,) or out.touched.dtype != torch.bool:
            raise _fail(who, "intercept", f"'touched' must be an [{n}] bool tensor")
    window = {**params, "start_round": 1, "every": 2, "end_round": 5}
    try:
        windowed = cls(cls.Params(**window))
    except ValidationError:
        windowed = None  # Params without the shared window fields: nothing to check
    if windowed is not None:
        got = [r for r in range(10) if windowed.active(r)]
        if got != [1, 3, 5]:
            raise _fail(who, "active", f"with start_round 1, every 2, end_round 5 it acts "
                                       f"in rounds {got}, not [1, 3, 5]")
    x = torch.rand(12, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (12,), generator=g)
    triggered = build().triggered_testset(x, y)
    if triggered is not None and (len(triggered) != 2
                                  or triggered[0].shape[0] != triggered[1].shape[0]):
        raise _fail(who, "triggered_testset", "must return None or (samples, labels) of "
                                              "equal length")


__all__ = ["BAD_VALUES", "ConformanceError", "check_attack", "check_defense"]
