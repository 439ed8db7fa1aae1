"""byzbench defenses as Flower strategies (``pip install 'byzbench[flower]'``).

:class:`RobustStrategy` is a Flower ``FedAvg`` (the message-based ServerApp strategy API of
``flwr.serverapp.strategy``) whose ``aggregate_train`` runs a byzbench defense instead of the
weighted mean::

    strategy = RobustStrategy("signguard")                               # a name
    strategy = RobustStrategy({"name": "trimmed_mean", "beta": 0.1})     # with parameters
    strategy = RobustStrategy("ecdsa+multikrum", public_keys=keys)       # a pipeline
    strategy = RobustStrategy("mypkg.defenses:MyDefense")                # a plugin

The spec is validated exactly as a grid's ``defense`` axis entry. Each round the replies'
arrays become the ``[n, d]`` update matrix relative to the global arrays sent (key order,
shapes and dtypes kept; sample counts from the replies' ``num-examples`` metric), the defense
returns its verdict with the engine's :class:`~byzbench.defenses.base.DefenseSetup` /
:class:`~byzbench.defenses.base.RoundContext` semantics (round = ``server_round − 1``, client
ids = stable indices of the node ids, ``f`` from ``f`` or ``assumed_fraction`` of the
round's replies), and θ ← θ + ``server_lr`` · aggregate. Replies that cannot form a row
(error replies, missing arrays or ``num-examples``, other keys or shapes, non-finite values)
are rejected, flagged and counted against ``f`` as the defense template counts non-finite
rows. The round's metrics (``byzbench.*`` keys) say who was flagged and rejected (node ids),
the defense's numeric diagnostics and the aggregation time.

Signatures: for a defense that verifies them (``signature_scheme``), :func:`signing_mod`
signs each train reply on the client over the simulator's canonical message
(:func:`byzbench.crypto.signed_bytes`: client id, round, the server's nonce, SHA-256 of the
float32 update) and the strategy verifies against ``public_keys`` (node id → public key);
:func:`enroll_nodes` binds node ids to out-of-band registered keys by proof of possession.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.serverapp.strategy import FedAvg
except ImportError:  # pragma: no cover - exercised by the test that hides flwr
    raise ImportError("byzbench.flower needs Flower: pip install 'byzbench[flower]'"
                      ) from None

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from byzbench.config import ConfigError, grid_from_dict
from byzbench.crypto import (
    PublicKeyRegistry,
    SignedMessage,
    sign_bytes,
    signed_bytes,
    update_digests,
    verify_signature,
)
from byzbench.defenses.base import Defense, DefenseSetup, RoundContext, Verdict
from byzbench.engine.simulation import build
from byzbench.registry import DEFENSES
from byzbench.seeding import torch_generator
from byzbench.threat import count_of

log = logging.getLogger("byzbench.flower")

DEFAULT_ASSUMED_FRACTION = 0.2
#: config keys the strategy sends when signing is on; the reply header the mod adds
KEY_CLIENT_ID, KEY_ROUND, KEY_NONCE = "byzbench.client-id", "byzbench.round", "byzbench.nonce"
SIGNATURE_RECORD = "byzbench.signature"
ENROLL_TYPE = "query.byzbench_enroll"
_ENROLL_DOMAIN = b"byzbench/enroll/v1"


# -- arrays <-> one flat row -------------------------------------------------------------------

def matrix_dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    """The update matrix's dtype: float64 when any array is float64, else float32."""
    return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dtypes) \
        else np.dtype(np.float32)


@dataclass(frozen=True)
class Layout:
    """Key order, shapes and dtypes of the global arrays; where each sits in a flat row."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    dtype: np.dtype                      # of the flat rows

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> Layout:
        keys = tuple(arrays)
        dtypes = tuple(np.asarray(arrays[k]).dtype for k in keys)
        return cls(keys, tuple(tuple(np.shape(arrays[k])) for k in keys), dtypes,
                   matrix_dtype(dtypes))

    @property
    def dim(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        if not self.keys:
            return np.zeros(0, dtype=self.dtype)
        return np.concatenate([np.asarray(arrays[k], dtype=self.dtype).reshape(-1)
                               for k in self.keys])

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        at = 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes):
            size = math.prod(shape)
            part = flat[at:at + size].reshape(shape)
            if not np.issubdtype(dtype, np.floating):
                part = np.rint(part)
            out[key] = part.astype(dtype)
            at += size
        return out


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def update_row(layout: Layout, global_flat: np.ndarray, local: Mapping[str, np.ndarray]
               ) -> np.ndarray:
    """The flat update ``local − global`` in the layout's dtype: the row a client signs and
    the server aggregates (the same function on both sides, so the bytes agree)."""
    return layout.flatten(local) - global_flat


class ReplyError(ValueError):
    """A reply that cannot become a row; ``reason`` is its short name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _find_arrays(content: RecordDict, key: str) -> ArrayRecord:
    if key in content.array_records:
        return content.array_records[key]
    if len(content.array_records) == 1:
        return next(iter(content.array_records.values()))
    raise ReplyError("missing_arrays", f"no ArrayRecord '{key}'")


def _num_examples(content: RecordDict, key: str) -> float:
    for record in content.metric_records.values():
        if key in record:
            value = record[key]
            if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
                return float(value)
            raise ReplyError("bad_num_examples", f"{key}={value!r}")
    raise ReplyError("missing_num_examples", f"no '{key}' metric")


def reply_row(layout: Layout, global_flat: np.ndarray, content: RecordDict,
              arrayrecord_key: str = "arrays", out: np.ndarray | None = None) -> np.ndarray:
    """A reply's arrays as one update row (written into ``out`` [d] when given), or
    :class:`ReplyError`. Per key, ``local − global`` in the layout's dtype: the same
    numbers as :func:`update_row`."""
    record = _find_arrays(content, arrayrecord_key)
    if tuple(record.keys()) != layout.keys:
        raise ReplyError("wrong_keys", f"{list(record.keys())[:5]}…")
    row = np.empty(layout.dim, dtype=layout.dtype) if out is None else out
    at = 0
    for key, shape in zip(layout.keys, layout.shapes):
        try:
            value = record[key].numpy()
        except Exception as exc:  # a payload that does not deserialize
            raise ReplyError("bad_array", f"{key}: {exc}") from None
        if tuple(value.shape) != shape:
            raise ReplyError("wrong_shape", f"{key}: {tuple(value.shape)} != {shape}")
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise ReplyError("bad_dtype", f"{key}: {value.dtype}")
        size = value.size
        np.subtract(value.reshape(-1).astype(layout.dtype, copy=False),
                    global_flat[at:at + size], out=row[at:at + size])
        at += size
    if not np.isfinite(row).all():
        raise ReplyError("nonfinite")
    return row


# -- the strategy ----------------------------------------------------------------------------

def validate_spec(spec: Any) -> Any:
    """The defense spec resolved exactly as a grid's ``defense`` axis entry (a
    :class:`~byzbench.config.ComponentSpec`); a mistake raises ConfigError."""
    return grid_from_dict({"name": "flower", "grid": {"defense": [spec]}},
                          source="RobustStrategy").cells[0].config.defense


@dataclass
class RoundReport:
    """What the strategy did in one round (``RobustStrategy.history``)."""

    server_round: int
    node_ids: list[int]                      # the rows, in order
    client_ids: list[int]                    # their stable indices
    num_samples: list[float]
    f: int
    flagged_nodes: list[int]
    rejected: dict[int, str]                 # node id -> reason
    verdict: Verdict | None
    agg_seconds: float
    skipped: str | None = None
    updates: torch.Tensor | None = None      # [n, d] when keep_updates
    global_params: torch.Tensor | None = None
    messages: list[SignedMessage] | None = None  # the signed headers (signing on)
    nonce: bytes | None = None


class RobustStrategy(FedAvg):
    """A Flower ``FedAvg`` whose training aggregation is a byzbench defense.

    ``spec``: a defense spec as in a grid. ``assumed_fraction`` / ``f``: the malicious
    clients assumed per round (``f`` wins; default: the spec's ``assumed_fraction``, else
    ``DEFAULT_ASSUMED_FRACTION`` of the round's replies). ``public_keys``: node id → public
    key (``cryptography`` objects), for defenses that verify signatures. ``server_update``:
    ``(global ArrayRecord, round) → ArrayRecord`` trained on the server's root data
    (FLTrust). ``server_lr``: θ ← θ + server_lr · aggregate. ``seed``: the defense's random
    stream. ``keep_updates``: keep each round's update matrix in ``history``. Other keyword
    arguments go to ``FedAvg``.
    """

    def __init__(self, spec: Any = "fedavg", *, assumed_fraction: float | None = None,
                 f: int | None = None, public_keys: Mapping[int, Any] | None = None,
                 server_update: Callable[[ArrayRecord, int], ArrayRecord] | None = None,
                 server_lr: float = 1.0, seed: int = 0, device: str = "cpu",
                 keep_updates: bool = False, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.spec = validate_spec(spec)
        self.defense: Defense = build(DEFENSES, self.spec)
        if assumed_fraction is not None and not 0.0 <= assumed_fraction < 1.0:
            raise ValueError(f"assumed_fraction must be in [0, 1), got {assumed_fraction}")
        if f is not None and f < 0:
            raise ValueError(f"f must be >= 0, got {f}")
        own = getattr(self.defense.params, "assumed_fraction", None)
        self.assumed_fraction = (assumed_fraction if assumed_fraction is not None else
                                 own if own is not None else DEFAULT_ASSUMED_FRACTION)
        self.f = f
        self.scheme = self.defense.signature_scheme
        if self.scheme is not None and not public_keys:
            raise ValueError(f"defense '{self.spec.display}' verifies signatures: pass "
                             f"public_keys (node id -> public key), see enroll_nodes()")
        if self.defense.root_data_size() > 0 and server_update is None:
            raise ValueError(f"defense '{self.spec.display}' needs the server's own update "
                             f"on its root data: pass server_update=(arrays, round) -> arrays")
        self.public_keys = dict(public_keys or {})
        self.server_update = server_update
        self.server_lr = float(server_lr)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.keep_updates = keep_updates
        self.history: list[RoundReport] = []
        self._index: dict[int, int] = {}
        for node in sorted(self.public_keys):
            self._index[int(node)] = len(self._index)
        self._ready = False
        self._layout: Layout | None = None
        self._global: np.ndarray | None = None
        self._nonce: bytes | None = None
        self._round = 0
        self._num_nodes = 0

    # -- ids --------------------------------------------------------------------------------

    def client_index(self, node_id: int) -> int:
        """The stable client index of a node id (assigned on first sight)."""
        node_id = int(node_id)
        if node_id not in self._index:
            self._index[node_id] = len(self._index)
        return self._index[node_id]

    def summary(self) -> None:
        super().summary()
        log.info("byzbench defense: %s (signatures: %s)", self.spec.display,
                 self.scheme or "off")

    # -- rounds -----------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]:
        global_arrays = numpy_arrays(arrays)
        self._layout = Layout.of(global_arrays)
        self._global = self._layout.flatten(global_arrays)
        self._round = server_round
        self._num_nodes = max(self._num_nodes, len(list(grid.get_node_ids())))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.scheme is None:
            return messages
        self._nonce = os.urandom(16)
        out = []
        for msg in messages:   # one record per node: each is told its client id
            node = msg.metadata.dst_node_id
            cfg = ConfigRecord(dict(msg.content[self.configrecord_key]))
            cfg[KEY_CLIENT_ID] = self.client_index(node)
            cfg[KEY_ROUND] = server_round - 1
            cfg[KEY_NONCE] = self._nonce
            content = RecordDict({self.arrayrecord_key: msg.content[self.arrayrecord_key],
                                  self.configrecord_key: cfg})
            out.append(Message(content=content, message_type=MessageType.TRAIN,
                               dst_node_id=node))
        return out

    def _f_for(self, replies: int) -> int:
        if self.f is not None:
            return int(self.f)
        return count_of(self.assumed_fraction, replies)

    def _setup(self, clients_per_round: int) -> None:
        assert self._layout is not None
        registry = None
        if self.scheme is not None:
            registry = PublicKeyRegistry({self.client_index(n): k
                                          for n, k in self.public_keys.items()},
                                         self.scheme)  # type: ignore[arg-type]
        hook = self._server_update_hook() if self.server_update is not None else None
        num_clients = max(self._num_nodes, len(self._index), clients_per_round)
        self.defense.setup(DefenseSetup(
            num_clients=num_clients, clients_per_round=clients_per_round,
            f=self._f_for(clients_per_round), dim=self._layout.dim, seed=self.seed,
            device=self.device, public_keys=registry, server_update=hook))
        self._ready = True

    def _server_update_hook(self) -> Callable[[torch.Tensor, int], torch.Tensor]:
        layout, fn = self._layout, self.server_update
        assert layout is not None and fn is not None

        def hook(theta: torch.Tensor, round_: int) -> torch.Tensor:
            flat = theta.detach().cpu().numpy().astype(layout.dtype)
            arrays = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                  for k, v in layout.unflatten(flat).items()})
            trained = fn(arrays, round_ + 1)
            row = update_row(layout, flat, numpy_arrays(trained))
            return torch.from_numpy(row).to(theta.device)

        return hook

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self._layout is None or self._global is None:
            raise RuntimeError("aggregate_train before configure_train: the strategy does not "
                               "know the global arrays of this round")
        layout, theta = self._layout, self._global
        matrix = np.empty((len(replies), layout.dim), dtype=layout.dtype)
        rows: list[np.ndarray] = []
        nodes: list[int] = []
        samples: list[float] = []
        headers: list[SignedMessage] = []
        rejected: dict[int, str] = {}
        good: list[Message] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            try:
                if msg.has_error():
                    raise ReplyError("error_reply", str(msg.error.reason))
                content = msg.content
                row = reply_row(layout, theta, content, self.arrayrecord_key,
                                out=matrix[len(rows)])
                count = _num_examples(content, self.weighted_by_key)
            except ReplyError as exc:
                rejected[node] = exc.reason
                log.warning("byzbench: rejected the reply of node %d: %s", node, exc)
                continue
            if self.scheme is not None:
                headers.append(_header(content, self.client_index(node)))
            rows.append(row)
            nodes.append(node)
            samples.append(count)
            good.append(msg)
        if not self._ready:
            self._setup(len(replies))
        f_all = self._f_for(len(replies))
        f_rows = max(f_all - len(rejected), 0)
        r = server_round - 1
        ids = [self.client_index(n) for n in nodes]
        report = RoundReport(server_round, nodes, ids, samples, f_rows, [], rejected, None, 0.0)
        if self.scheme is not None:
            report.messages, report.nonce = headers, self._nonce
        self.history.append(report)
        if not rows:
            report.skipped = "no usable reply"
            return None, self._metrics(report, good)
        reason = self.defense.requirement(len(rows), f_rows)
        if reason is not None:
            report.skipped = reason
            log.warning("byzbench: round %d not aggregated: %s", server_round, reason)
            return None, self._metrics(report, good)
        dtype = torch.float64 if layout.dtype == np.float64 else torch.float32
        updates = torch.from_numpy(matrix[:len(rows)]).to(self.device, dtype)
        global_params = torch.from_numpy(theta).to(self.device, dtype)
        ctx = RoundContext(round=r, client_ids=torch.tensor(ids, dtype=torch.long,
                                                            device=self.device),
                           num_samples=torch.tensor(samples, dtype=dtype, device=self.device),
                           f=f_rows, generator=torch_generator(self.seed, "defense", r),
                           global_params=global_params,
                           messages=headers if self.scheme is not None else None,
                           nonce=self._nonce if self.scheme is not None else None,
                           dropped=len(rejected))
        start = time.perf_counter()
        verdict = self.defense(updates, ctx)
        new = theta + self.server_lr * verdict.aggregate.detach().cpu().numpy().astype(
            layout.dtype)
        report.agg_seconds = time.perf_counter() - start
        report.verdict = verdict
        if verdict.flagged is not None:
            report.flagged_nodes = [n for n, x in zip(nodes, verdict.flagged.tolist()) if x]
        if self.keep_updates:
            report.updates, report.global_params = updates, global_params
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v))
                              for k, v in layout.unflatten(new).items()})
        return arrays, self._metrics(report, good)

    def _metrics(self, report: RoundReport, good: list[Message]) -> MetricRecord:
        metrics = MetricRecord()
        flagged = set(report.flagged_nodes)
        try:  # the clients' own metrics, averaged as FedAvg does, over the accepted replies
            kept = [m.content for m in good if int(m.metadata.src_node_id) not in flagged]
            if kept:
                metrics.update(self.train_metrics_aggr_fn(kept, self.weighted_by_key))
        except Exception as exc:  # inconsistent client metrics never stop the round
            log.warning("byzbench: client metrics not aggregated: %s", exc)
        metrics["byzbench.rows"] = len(report.node_ids)
        metrics["byzbench.f"] = report.f
        metrics["byzbench.flagged"] = len(report.flagged_nodes)
        metrics["byzbench.flagged-node-ids"] = list(report.flagged_nodes)
        metrics["byzbench.rejected"] = len(report.rejected)
        metrics["byzbench.rejected-node-ids"] = list(report.rejected)
        metrics["byzbench.skipped"] = int(report.skipped is not None)
        metrics["byzbench.agg-ms"] = report.agg_seconds * 1e3
        verdict = report.verdict
        if verdict is not None:
            if verdict.verify_seconds is not None:
                metrics["byzbench.verify-ms"] = verdict.verify_seconds * 1e3
            n = len(report.node_ids)
            for key, value in verdict.diagnostics.items():
                number = _numeric(value, n)
                if number is not None:
                    metrics[f"byzbench.diag.{key}"] = number
        return metrics


def _numeric(value: Any, n: int) -> float | list[float] | None:
    """A diagnostic as a MetricRecord value: a number, or one float per row (NaN kept);
    strings and other values are left out."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return float(value)
        return [float(x) for x in value.detach().cpu().reshape(-1).tolist()]
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return [float(x) for x in value]
    return None


def _header(content: RecordDict, client_index: int) -> SignedMessage:
    """The signed header of a reply; an absent or malformed one becomes a header the
    signature layer rejects (empty signature), never an exception."""
    record = content.config_records.get(SIGNATURE_RECORD)
    try:
        assert record is not None
        return SignedMessage(int(record["client-id"]), int(record["round"]),
                             bytes(record["nonce"]), bytes(record["signature"]))
    except Exception:
        return SignedMessage(client_index, -1, b"", b"")


# -- client side: keys, signing mod, enrollment ------------------------------------------------

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
KeyLoader = Callable[[Context], tuple[str, PrivateKey]]


def scheme_of(key: Any) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa-p256"
    raise TypeError(f"unsupported key type {type(key).__name__}")


def signing_mod(load_key: KeyLoader) -> Callable[[Message, Context, Callable], Message]:
    """A ClientApp mod that signs each train reply's update with the client's key, over
    the simulator's canonical message (client id, round, nonce, SHA-256 of the float32
    update). ``load_key(context) -> (key name, private key)``. Messages without the
    strategy's signing fields pass through unsigned."""

    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        config = next((c for c in msg.content.config_records.values() if KEY_NONCE in c),
                      None)
        if config is None:
            return call_next(msg, context)
        global_arrays = numpy_arrays(next(iter(msg.content.array_records.values())))
        reply = call_next(msg, context)
        if reply.has_error() or len(reply.content.array_records) != 1:
            return reply
        layout = Layout.of(global_arrays)
        local = numpy_arrays(next(iter(reply.content.array_records.values())))
        if tuple(local) != layout.keys:
            return reply      # the server rejects it anyway (wrong keys)
        row = update_row(layout, layout.flatten(global_arrays), local)
        digest = update_digests(row[None, :])[0]
        cid, rnd, nonce = int(config[KEY_CLIENT_ID]), int(config[KEY_ROUND]), \
            bytes(config[KEY_NONCE])
        _, key = load_key(context)
        reply.content[SIGNATURE_RECORD] = ConfigRecord({
            "client-id": cid, "round": rnd, "nonce": nonce,
            "signature": sign_bytes(key, signed_bytes(cid, rnd, nonce, digest))})
        return reply

    return mod


def _enroll_bytes(node_id: int, nonce: bytes) -> bytes:
    return b"".join((_ENROLL_DOMAIN, struct.pack(">Q", node_id), nonce))


def enroll_handler(load_key: KeyLoader) -> Callable[[Message, Context], Message]:
    """The ClientApp query function (``app.query("byzbench_enroll")``) that proves the node
    holds the private key registered under its key name: it signs (node id, nonce)."""

    def handler(msg: Message, context: Context) -> Message:
        nonce = bytes(msg.content["challenge"]["nonce"])
        name, key = load_key(context)
        sig = sign_bytes(key, _enroll_bytes(int(context.node_id), nonce))
        return Message(RecordDict({"enroll": ConfigRecord({"name": name, "signature": sig})}),
                       reply_to=msg)

    return handler


class Enrolled(dict):
    """node id → public key, with ``names``: node id → the key name it proved."""

    names: dict[int, str]


def enroll_nodes(grid: Any, registered: Mapping[str, Any], timeout: float = 120.0,
                 min_nodes: int | None = None) -> Enrolled:
    """Bind the connected nodes to keys registered out of band (``registered``: key name →
    public key): each node signs a fresh challenge with the private key of the name it
    claims; a node whose signature fails, or that claims a name already taken, is left out.
    Waits up to ``timeout`` seconds for ``min_nodes`` nodes (default: one per registered
    key) to connect. Returns node id → public key for :class:`RobustStrategy`'s
    ``public_keys``."""
    want = len(registered) if min_nodes is None else min_nodes
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    nonce = os.urandom(16)
    messages = [Message(RecordDict({"challenge": ConfigRecord({"nonce": nonce})}),
                        message_type=ENROLL_TYPE, dst_node_id=n) for n in nodes]
    out = Enrolled()
    out.names = {}
    taken: set[str] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = int(reply.metadata.src_node_id)
        try:
            if reply.has_error():
                raise ValueError(reply.error.reason)
            record = reply.content["enroll"]
            name, sig = str(record["name"]), bytes(record["signature"])
            key = registered[name]
        except Exception as exc:
            log.warning("byzbench: node %d did not enroll: %s", node, exc)
            continue
        if name in taken or not verify_signature(key, scheme_of(key), sig,  # type: ignore
                                                 _enroll_bytes(node, nonce)):
            log.warning("byzbench: node %d failed enrollment as '%s'", node, name)
            continue
        taken.add(name)
        out[node] = key
        out.names[node] = name
    return out


def generate_keys(directory: str | Path, names: Sequence[str],
                  scheme: str = "ecdsa-p256") -> None:
    """Write ``<name>.key`` (private, PEM, mode 0600) and ``<name>.pub`` (public, PEM) for
    each name: the out-of-band provisioning of the example."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        key: Any = (ec.generate_private_key(ec.SECP256R1()) if scheme == "ecdsa-p256"
                    else ed25519.Ed25519PrivateKey.generate())
        private = path / f"{name}.key"
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        private.chmod(0o600)
        (path / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: str | Path) -> PrivateKey:
    return serialization.load_pem_private_key(Path(path).read_bytes(), password=None
                                              )  # type: ignore[return-value]


def load_public_keys(directory: str | Path) -> dict[str, Any]:
    """``<name>.pub`` files of a directory: name → public key."""
    return {p.stem: serialization.load_pem_public_key(p.read_bytes())
            for p in sorted(Path(directory).glob("*.pub"))}


__all__ = ["ConfigError", "DEFAULT_ASSUMED_FRACTION", "Enrolled", "Layout", "ReplyError", "RobustStrategy",
           "RoundReport", "enroll_handler", "enroll_nodes", "generate_keys",
           "load_private_key", "load_public_keys", "reply_row", "signing_mod",
           "validate_spec"]
