"""One cell of a grid: the federated round loop of DESIGN.md.

Per round: broadcast θ; all participants train at once; updates Δ = θ_i − θ form one
``[n, d]`` matrix; model-poisoning attacks rewrite the malicious rows; when the defense
verifies signatures, every client signs its message and transport attacks alter messages in
transit; the defense returns a :class:`~byzbench.defenses.base.Verdict` and
θ ← θ + η_server · aggregate; detection counts and timings are recorded, and every
``eval_every`` rounds (and after the last) the test accuracy, loss and backdoor ASR.
With ``privacy.dp`` (:mod:`byzbench.privacy.dp`, DP-FedAvg) the honest clients clip and
noise their updates before the attack reads them (local), or every row is clipped once the
attack has written its rows (central) and the server adds its noise to the verdict's
aggregate; each round's row carries the cumulative ε.

Call :func:`run_cell` with a :class:`~byzbench.config.CellConfig` (for example
``load_grid("configs/quick.yaml").cells[0].config``); it returns a :class:`CellResult`.

Devices. The cell's tensors (data, θ, updates) live on its device (``device``: auto = CUDA
when torch sees one). Every random draw — client sampling, mini-batches, attack and
defense randomness — comes from a generator on the *host* seeded by (cell seed, purpose),
so a cell draws the same numbers on any device, executor, worker count or ``client_chunk``.
Inside a round the engine itself never waits on the device: host data go up with
asynchronous pinned copies, the defense is timed with CUDA events, and the round's numbers
(detection counts, divergence, evaluation) come back in one device-to-host copy at its end.
The only other copy of the engine's is the signature layer's, which hashes the update bytes
once per round on the host; an attack or defense may add its own.

Secure aggregation (``privacy.secure_aggregation``: ``secagg`` or ``secagg+``): once the
attack has written the malicious rows, the updates stay with the clients. The defense's
:meth:`~byzbench.defenses.base.Defense.secure_aggregate` gets a
:class:`~byzbench.privacy.secagg.SecureChannel` instead of the update matrix, and sees only
the unmasked sums of what it asks the clients to compute (see :mod:`byzbench.privacy.secagg`
for the protocol and its threat model); a defense that needs plaintext updates makes the
cell skipped, with a reason that starts with "secure aggregation:". Signatures then cover
the masked messages. The round records ``secagg_ms`` (masking + unmasking, all its sums).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from byzbench.attacks.base import Attack, AttackContext, AttackSetup
from byzbench.config import CellConfig, ComponentSpec
from byzbench.crypto import ClientKeyring, align_messages
from byzbench.data.base import Dataset
from byzbench.defenses.base import Defense, DefenseSetup, RoundContext, Verdict, check_verdict
from byzbench.engine.training import (
    ClientData,
    evaluate_sums,
    plan_batches,
    predict,
    to_device,
    train_chunked,
    train_vectorized,
)
from byzbench.metrics import detection_counts, durability, summarize_rounds
from byzbench.models import BatchedModel
from byzbench.privacy.dp import DPMechanism, clip_rows
from byzbench.privacy.secagg import PlainChannel, SecureAbort, SecureChannel
from byzbench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, PARTITIONS
from byzbench.seeding import numpy_rng, torch_generator
from byzbench.threat import assumed_malicious


@dataclass
class CellResult:
    """The outcome of one cell: ``done``, ``skipped`` (with the reason) or ``failed``."""

    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0


class SkipCell(Exception):
    """The defense cannot run in this cell (e.g. Krum with n ≤ 2f + 2)."""


def build(kind_registry: Any, spec: ComponentSpec) -> Any:
    cls = kind_registry.get(spec.name)
    return cls(cls.Params(**spec.params))


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when torch sees a device, else CPU; ``cuda`` fails clearly without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    return torch.device(name)


def assumed_f(config: CellConfig, defense: Defense) -> int:
    """The malicious count per round that the defender assumes."""
    return assumed_malicious(config.participants, config.clients, config.num_malicious,
                             getattr(defense.params, "assumed_fraction", None))


def skip_reason(config: CellConfig) -> str | None:
    """Why the cell's defense cannot run with its n and f, or under the cell's secure
    aggregation, or None (cheap: no data loaded)."""
    defense = build(DEFENSES, config.defense)
    return (defense.requirement(config.participants, assumed_f(config, defense))
            or secure_skip_reason(config, defense, ATTACKS.get(config.attack.name).stage))


def secure_skip_reason(config: CellConfig, defense: Defense, attack_stage: str) -> str | None:
    """Why the cell cannot run under its secure aggregation, or None (also None without)."""
    if config.privacy.secure_aggregation == "none":
        return None
    if attack_stage == "transport":
        return ("secure aggregation: transport attacks on masked messages are not modelled "
                "(the attack alters plaintext updates in transit)")
    return defense.secure_requirement()


class Simulation:
    """The state of one cell; :meth:`run` plays every round."""

    def __init__(self, config: CellConfig, device: torch.device | None = None) -> None:
        self.config = c = config
        self.device = device or resolve_device(c.device)
        self.seed = c.seed
        self.defense: Defense = build(DEFENSES, c.defense)
        self.attack: Attack = build(ATTACKS, c.attack)
        self.f_assumed = assumed_f(c, self.defense)
        reason = (self.defense.requirement(c.participants, self.f_assumed)
                  or secure_skip_reason(c, self.defense, self.attack.stage))
        if reason:
            raise SkipCell(reason)
        self.dp = DPMechanism.from_config(c.privacy.dp, c.clients, c.participants, c.rounds)

        dataset: Dataset = build(DATASETS, c.dataset).load()
        self.num_classes = dataset.num_classes
        self.model: BatchedModel = build(MODELS, c.model).build(dataset.input_shape,
                                                                dataset.num_classes)
        x_train, y_train = dataset.x_train, dataset.y_train
        root_rows = self._hold_out_root(len(y_train))
        train_rows = np.setdiff1d(np.arange(len(y_train)), root_rows)
        parts = build(PARTITIONS, c.partition).split(
            y_train.numpy()[train_rows], c.clients, numpy_rng(self.seed, "partition"))
        parts = [train_rows[p] for p in parts]
        self.malicious = np.zeros(c.clients, dtype=bool)
        self.malicious[numpy_rng(self.seed, "malicious").choice(
            c.clients, c.num_malicious, replace=False)] = True

        self.attack.setup(AttackSetup(
            num_clients=c.clients, num_classes=dataset.num_classes,
            input_shape=dataset.input_shape, rounds=c.rounds, seed=self.seed,
            defense_name=c.defense.name, device=self.device))
        self.data = self._client_data(x_train, y_train, parts)
        self.chunk = c.client_chunk
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)
        triggered = self.attack.triggered_testset(self.x_test, self.y_test)
        self.triggered = triggered if triggered is not None and len(triggered[1]) else None

        self.theta = self.model.init(torch_generator(self.seed, "init")).to(self.device)
        self.keyring: ClientKeyring | None = None
        public_keys = None
        scheme = self.defense.signature_scheme
        if scheme is not None:
            self.keyring = ClientKeyring(range(c.clients), scheme)
            public_keys = self.keyring.public_registry()
        self.root = (x_train[root_rows].to(self.device), y_train[root_rows].to(self.device))
        self.defense.setup(DefenseSetup(
            num_clients=c.clients, clients_per_round=c.participants, f=self.f_assumed,
            dim=self.model.dim, seed=self.seed, device=self.device, public_keys=public_keys,
            server_update=self._server_update if len(root_rows) else None))
        self._server_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    # -- setup helpers ---------------------------------------------------------------------

    def _hold_out_root(self, n_train: int) -> np.ndarray:
        size = self.defense.root_data_size()
        if size <= 0:
            return np.zeros(0, dtype=np.int64)
        if size >= n_train - self.config.clients:
            raise ValueError(f"root_size {size} leaves too few training samples for "
                             f"{self.config.clients} clients")
        return np.sort(numpy_rng(self.seed, "root").choice(n_train, size, replace=False))

    def _client_data(self, x: torch.Tensor, y: torch.Tensor, parts: list[np.ndarray]
                     ) -> ClientData:
        counts = np.array([len(p) for p in parts])
        index = np.zeros((len(parts), counts.max()), dtype=np.int64)
        mask = np.arange(counts.max())[None, :] < counts[:, None]
        index[mask] = np.concatenate(parts)
        poisoned_index = None
        mal_clients = np.flatnonzero(self.malicious)
        mal_rows = np.concatenate([parts[i] for i in mal_clients] or
                                  [np.zeros(0, dtype=np.int64)])
        if len(mal_rows) and self.attack.stage == "data" and not self.attack.benign:
            rows_t = torch.from_numpy(mal_rows)
            # which malicious client (0 = lowest id) each poisoned sample belongs to
            owner = torch.from_numpy(np.repeat(np.arange(len(mal_clients)),
                                               [len(parts[i]) for i in mal_clients]))
            px, py = self.attack.poison_client_data(x[rows_t], y[rows_t], owner,
                                                    torch_generator(self.seed, "poison"))
            remap = np.arange(len(y) + len(mal_rows))
            remap[mal_rows] = len(y) + np.arange(len(mal_rows))
            poisoned = index.copy()
            poisoned[self.malicious] = remap[index[self.malicious]]
            x = torch.cat([x, px.to(x.dtype)])
            y = torch.cat([y, py.to(y.dtype)])
            poisoned_index = torch.from_numpy(poisoned)
        # the index tables stay on the host: batch plans are drawn there (see the module doc)
        return ClientData(x=x.to(self.device), y=y.to(self.device),
                          index=torch.from_numpy(index), counts=torch.from_numpy(counts),
                          poisoned_index=poisoned_index)

    def _train(self, index: torch.Tensor, counts: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor, *purpose: object) -> torch.Tensor:
        """Updates [n, d] of the clients whose host-side ``index``/``counts`` rows are given.

        The plan is drawn once on the host for all of them, then trained in slices of
        ``client_chunk`` clients on the cell's device.
        """
        loc = self.config.local
        plan = plan_batches(index, counts, loc.batch_size, loc.steps, loc.epochs,
                            torch_generator(self.seed, "batches", *purpose))
        return train_chunked(self.model, self.theta, x, y, plan, loc.lr, loc.momentum,
                             loc.weight_decay, chunk=self.chunk)

    def _server_update(self, theta: torch.Tensor, round_: int) -> torch.Tensor:
        """The server's own update on its root data (FLTrust), from ``theta`` in round
        ``round_``: a pure function of the two (its mini-batches are seeded by the round),
        computed once when a preview and the round itself ask for the same one."""
        cached = self._server_cache
        if cached is not None and cached[0] == round_ and cached[1] is theta:
            return cached[2]
        x, y = self.root
        index = torch.arange(len(y)).unsqueeze(0)
        counts = torch.tensor([len(y)])
        loc = self.config.local
        plan = plan_batches(index, counts, loc.batch_size, loc.steps, loc.epochs,
                            torch_generator(self.seed, "root-batches", round_ + 1))
        update = train_vectorized(self.model, theta, x, y, plan.to(theta.device), loc.lr,
                                  loc.momentum, loc.weight_decay)[0]
        self._server_cache = (round_, theta, update)
        return update

    # -- the round loop --------------------------------------------------------------------

    def _participants(self, round_: int) -> np.ndarray:
        c = self.config
        if c.participants == c.clients:
            return np.arange(c.clients)
        return np.sort(numpy_rng(self.seed, "sampling", round_).choice(
            c.clients, c.participants, replace=False))

    def run_round(self, r: int) -> dict[str, Any]:
        c = self.config
        dev = self.device
        clients = self._participants(r)
        host_ids = torch.from_numpy(clients)
        ids = to_device(host_ids, dev)
        attack_on = self.attack.active(r) and not self.attack.benign
        index = self.data.index
        if attack_on and self.data.poisoned_index is not None:
            index = self.data.poisoned_index
        everyone = len(clients) == c.clients   # the participants are clients 0..n-1
        host_counts = self.data.counts if everyone else self.data.counts[host_ids]
        counts = to_device(host_counts, dev)
        updates = self._train(index if everyone else index[host_ids], host_counts,
                              self.data.x, self.data.y, r)

        host_malicious = self.malicious[clients]
        any_malicious = bool(host_malicious.any())  # numpy: no device sync
        malicious = to_device(torch.from_numpy(host_malicious), dev)
        # who is attacking is known on the host, unless a transport attack says otherwise
        truth_h = torch.from_numpy(host_malicious & attack_on)
        truth: torch.Tensor | None = None
        reference = (malicious if self.attack.knowledge == "partial" else
                     to_device(torch.from_numpy(~host_malicious), dev))
        nonce = numpy_rng(self.seed, "nonce", r).bytes(16) if self.keyring else None
        rctx = RoundContext(round=r, client_ids=ids, num_samples=counts.to(updates.dtype),
                            f=self.f_assumed,
                            generator=torch_generator(self.seed, "defense", r),
                            global_params=self.theta, nonce=nonce)
        ctx = AttackContext(round=r, client_ids=ids, malicious=malicious, reference=reference,
                            generator=torch_generator(self.seed, "attack", r),
                            defense_name=c.defense.name, nonce=nonce,
                            oracle=self._oracle(clients, rctx) if self.attack.aware else None,
                            global_params=self.theta)
        if self.dp is not None and self.dp.mode == "local":
            # honest clients noise what they send: an attack that knows their updates sees this
            updates = self._dp_clients(updates, to_device(truth_h, dev), r)
        if attack_on and any_malicious and self.attack.stage != "transport":
            poisoned = self.attack.poison_updates(updates.clone(), ctx)
            updates = torch.where(malicious.unsqueeze(1), poisoned.to(updates.dtype), updates)
        if self.dp is not None and self.dp.mode == "central":
            updates = self._dp_clients(updates, to_device(truth_h, dev), r)  # the norm bound

        secure = c.privacy.secure_aggregation != "none"
        messages, sign_s, secagg_s = None, None, None
        if self.keyring is not None and not secure:
            # the one host copy of a round: the signature layer hashes the update bytes
            messages, sign_s = self.keyring.sign_round(clients.tolist(), r, nonce, updates)
        if attack_on and self.attack.stage == "transport" and any_malicious:
            inter = self.attack.intercept(updates, messages, ctx)
            updates, messages = inter.updates, inter.messages
            if messages is not None:  # one header per row; a dropped message is None
                messages = align_messages(messages, clients.tolist())
            truth = inter.touched.bool().to(dev)
            if self.dp is not None and self.dp.mode == "central":
                # the server's norm bound on what arrived (rows inside it are untouched)
                updates = self._dp_clients(updates, truth, r)

        timer = _Timer(dev)
        if secure:
            verdict, secagg_s, sign_s = self._secure_verdict(
                updates, rctx, clients, ctx if attack_on and any_malicious else None)
        else:
            verdict = self.defense(updates, replace(rctx, messages=messages))
        timer.stop()
        n = len(clients)
        check_verdict(self.defense, verdict, n, self.model.dim, values=False)
        aggregate = verdict.aggregate
        if self.dp is not None:
            aggregate = self.dp.server_side(aggregate, n,
                                            torch_generator(self.seed, "dp-central", r))
        self.theta = self.theta + c.server.lr * aggregate.to(self.theta.dtype)

        # everything the round reports, fetched from the device in one copy
        fetch = [torch.isfinite(self.theta).all().to(torch.float64).reshape(1)]
        if truth is not None:
            fetch.append(truth.to(torch.float64).reshape(-1))
        flagged = verdict.flagged
        if flagged is not None:
            fetch.append(flagged.to(dev).bool().to(torch.float64).reshape(-1))
        evaluating = (r + 1) % c.eval_every == 0 or r == c.rounds - 1
        n_test = self.x_test.shape[0]
        if evaluating:
            fetch.append(evaluate_sums(self.model, self.theta, self.x_test, self.y_test
                                       ).to(torch.float64))
            if self.triggered is not None:
                pred = predict(self.model, self.theta, self.triggered[0])
                fetch.append((pred == self.triggered[1]).float().mean().to(torch.float64
                                                                           ).reshape(1))
        host = torch.cat(fetch).cpu()
        finite, at = bool(host[0]), 1
        if truth is not None:
            truth_h, at = host[at:at + n].bool(), at + n
        flagged_h = None
        if flagged is not None:
            flagged_h, at = host[at:at + n].bool(), at + n

        row: dict[str, Any] = {"round": r, "n": n,
                               "malicious": int(truth_h.sum()),
                               "agg_ms": timer.seconds() * 1e3,
                               "sign_ms": None if sign_s is None else sign_s * 1e3,
                               "verify_ms": _ms(verdict.verify_seconds),
                               "secagg_ms": _ms(secagg_s),
                               "finite": finite,
                               "diagnostics": diagnostics_json(verdict.diagnostics)}
        row.update(detection_counts(flagged_h, truth_h))
        if self.dp is not None:
            row["epsilon"] = self.dp.epsilons[r]
        if evaluating:
            correct, loss_sum = host[at].item(), host[at + 1].item()
            loss = loss_sum / n_test if n_test else float("nan")
            row.update({"accuracy": correct / n_test if n_test else float("nan"),
                        "loss": loss if math.isfinite(loss) else None})
            if self.triggered is not None:
                row["asr"] = host[at + 2].item()
        return row

    def _dp_clients(self, updates: torch.Tensor, attacker: torch.Tensor, r: int
                    ) -> torch.Tensor:
        """DP at the clients' end of round ``r`` (:meth:`DPMechanism.client_side`): central
        → every row clipped to C; local → the honest clients' rows (all but the attacker's,
        ``attacker`` [n] bool) clipped and noised."""
        assert self.dp is not None
        return self.dp.client_side(updates, ~attacker,
                                   torch_generator(self.seed, "dp-local", r))

    def _secure_verdict(self, updates: torch.Tensor, rctx: RoundContext, clients: np.ndarray,
                        actx: AttackContext | None) -> tuple[Verdict, float, float | None]:
        """The round under secure aggregation: the defense runs its protocol on a channel
        that holds the clients' updates client-side (malicious clients may deviate in what
        they submit: :meth:`Attack.secure_quantities`, when ``actx`` is given); returns
        (verdict, seconds of masking and unmasking, seconds of signing or None)."""
        c = self.config
        channel = SecureChannel(updates, c.privacy.secagg, c.privacy.secure_aggregation,
                                clients.tolist(), rctx.round,
                                numpy_rng(self.seed, "secagg-graph", rctx.round),
                                keyring=self.keyring, nonce=rctx.nonce)
        if actx is not None:
            attack = self.attack

            def deviate(step: int, quantities: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
                out = attack.secure_quantities(step, quantities, actx)
                return quantities if out is None else out

            channel.deviate, channel.malicious = deviate, actx.malicious
        ctx = replace(rctx, weights=self.defense.initial_weights(
            updates.new_empty(len(clients), 0), rctx))
        try:
            verdict = self.defense.secure_aggregate(channel, ctx)
        except SecureAbort as abort:  # no dropout recovery: the round yields nothing
            n = len(clients)
            verdict = Verdict(aggregate=updates.new_zeros(self.model.dim),
                              weights=updates.new_zeros(n),
                              flagged=torch.from_numpy(abort.rejected).to(updates.device),
                              diagnostics={"secagg": "aborted"})
        if channel.registry is not None:
            verdict = replace(verdict, verify_seconds=channel.verify_seconds)
        sign_s = channel.sign_seconds if self.keyring is not None else None
        return verdict, channel.timings.total, sign_s

    def _oracle(self, clients: np.ndarray, rctx: RoundContext
                ) -> Callable[[torch.Tensor], Verdict]:
        """The round's defense as a side-effect-free callable on a hypothetical ``[n, d]``
        update matrix (what defense-aware attacks query). It runs the defense's
        :meth:`~byzbench.defenses.base.Defense.preview` on the round's context with a
        stream of its own (the attacker knows the rule and its state, not the server's coin
        flips); when the defense verifies signatures, every row is its own client's, signed
        for this round (malicious clients sign their own poisoned updates), so every check
        passes: a defense that ``trusts_authentic`` (the built-in signature layer) gets the
        rows marked ``authentic`` and computes no signature, any other gets them signed as
        the clients would sign them; under central DP the rows are clipped as the server
        clips them."""
        keyring, defense, seed = self.keyring, self.defense, self.seed
        dp = self.dp
        secagg = self.config.privacy.secagg
        if self.config.privacy.secure_aggregation != "none":
            # the attacker's offline copy of the protocol: the same sums, no masks
            def secure_oracle(rows: torch.Tensor) -> Verdict:
                target = defense if defense.stateless else defense._scratch_copy()
                if dp is not None and dp.mode == "central":
                    rows = clip_rows(rows, dp.clip)
                ctx = replace(rctx, generator=torch_generator(seed, "oracle", rctx.round))
                ctx = replace(ctx, weights=target.initial_weights(
                    rows.new_empty(rows.shape[0], 0), ctx))
                return target.secure_aggregate(PlainChannel(rows, secagg), ctx)

            return secure_oracle

        def oracle(rows: torch.Tensor) -> Verdict:
            # built per call, so a round whose attack never asks pays nothing for it
            ctx = replace(rctx, generator=torch_generator(seed, "oracle", rctx.round))
            if dp is not None and dp.mode == "central":
                rows = clip_rows(rows, dp.clip)  # as the server clips what it receives
            if keyring is not None and defense.trusts_authentic:
                ctx = replace(ctx, authentic=True)
            elif keyring is not None:
                ctx = replace(ctx, messages=keyring.sign_round(clients.tolist(), rctx.round,
                                                               rctx.nonce, rows)[0])
            return defense.preview(rows, ctx)

        return oracle

    def run(self) -> list[dict[str, Any]]:
        return [self.run_round(r) for r in range(self.config.rounds)]


class _Timer:
    """Wall time of a step: ``perf_counter`` on the CPU; CUDA events on a GPU, read after the
    round's one sync, so timing never stalls the host."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.current_stream(device)
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record(self.stream)
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.end.record(self.stream)
        else:
            self.t1 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        return self.t1 - self.t0


def _median_of(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


DIAGNOSTICS_LIMIT = 256  # numbers per round: larger diagnostics are not stored


def diagnostics_json(diagnostics: Mapping[str, Any]) -> str | None:
    """A verdict's diagnostics as JSON for the round's row, or None when there are none or
    they hold more than :data:`DIAGNOSTICS_LIMIT` values (a per-row score of a large
    federation); NaN and ±Inf become null."""
    if not diagnostics:
        return None
    size = sum(v.numel() if isinstance(v, torch.Tensor) else
               len(v) if isinstance(v, (list, tuple)) else 1 for v in diagnostics.values())
    if size > DIAGNOSTICS_LIMIT:
        return None
    out: dict[str, Any] = {}
    for key, value in diagnostics.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist()
        out[key] = _finite_or_none(value)
    return json.dumps(out, allow_nan=False)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def run_cell(config: CellConfig, device: torch.device | None = None) -> CellResult:
    """Simulate one cell; a defense that cannot run gives a ``skipped`` result.

    Exceptions other than a skip propagate: the runner stores them as a failed cell.
    """
    start = time.perf_counter()
    try:
        sim = Simulation(config, device)
    except SkipCell as skip:
        return CellResult(status="skipped", error=str(skip),
                          wall_s=time.perf_counter() - start)
    rounds = sim.run()
    summary = summarize_rounds(rounds)
    if sim.triggered is not None and not sim.attack.benign:
        summary.update(durability(rounds, sim.attack.last_active_round(config.rounds)))
    summary["secure_aggregation"] = config.privacy.secure_aggregation
    summary["secagg_ms"] = _median_of(r.get("secagg_ms") for r in rounds)
    summary.update({"d": sim.model.dim, "f": config.num_malicious,
                    "clients": config.clients, "device": sim.device.type,
                    "threads": torch.get_num_threads()})
    if sim.dp is not None:
        summary.update({"epsilon": sim.dp.epsilon, "delta": sim.dp.delta,
                        "sigma": sim.dp.sigma, "dp_mode": sim.dp.mode})
    return CellResult(status="done", summary=summary, rounds=rounds,
                      wall_s=time.perf_counter() - start)


__all__ = ["CellResult", "Simulation", "SkipCell", "run_cell", "secure_skip_reason",
           "skip_reason"]
