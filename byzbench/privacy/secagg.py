"""Secure aggregation: pairwise masking with real cryptography (Bonawitz et al., CCS 2017)
and its sparse-graph variant SecAgg+ (Bell et al., CCS 2020).

The protocol, per round and per secure sum:

1. every client draws a fresh X25519 key pair (``cryptography``, keys from the OS random
   generator) and the server relays the public keys;
2. each pair (i, j) of neighbours in the masking graph agrees on a shared secret by X25519;
   HKDF-SHA-256 expands it into a 32-byte ChaCha20 key, its ``info`` binding a domain tag, the
   round and the ordered pair of client ids (i < j);
3. a client clips its update to [-range, range], computes the quantity the defense's protocol
   asks for (the update, a weighted update, a clipped difference, …), clips that to the sum's
   declared bound and encodes it in fixed point: round(x · 2^f) mod 2^bits;
4. the mask words of pair (i, j) for the s-th sum of the round are the ChaCha20 keystream
   under the pair key with nonce s (ChaCha20 encrypting zeros); client i adds them when
   j > i and subtracts them when j < i, mod 2^bits, and sends the masked vector;
5. the server adds the masked vectors mod 2^bits: the masks cancel pair by pair, leaving the
   exact sum of the encoded quantities, which it decodes (two's complement, / 2^f).

``neighbors``: plain SecAgg masks every pair (the complete graph, O(n²) keystreams);
SecAgg+ masks each client only with its neighbours in a random Harary graph H(n, k) — the
clients placed on a ring in a seeded random order, each joined to the k/2 nearest on either
side — with k = 2⌈log₂ n⌉ by default (Bell et al.'s k = O(log n); rounded up to even, at most
n − 1), drawn afresh each round from the cell's seed.

Reproducibility: keys come from the OS, so masks differ from run to run, but the unmasked
sum is exact mod 2^bits: it depends only on the clients' encoded quantities, and a cell's
numbers are the same on every run.

Threat model (what the simulation grants each party):

- the server is honest-but-curious: it follows the protocol and sees only the masked
  vectors, the public keys and the unmasked sums (and whatever the defense's protocol
  broadcasts, which the server itself chose); it never receives a client's update;
- malicious clients control their own update (model-poisoning attacks write it before
  masking) and, in a multi-sum protocol, every quantity they compute: an attack may replace
  what its clients submit to any secure sum (``Attack.secure_quantities``, through the
  channel's ``deviate`` hook); the ring bounds what they can send — each quantity is clipped to the
  sum's bound, and no non-finite value exists in the ring;
- signatures, when the defense asks for them, cover each masked message (the signed digest
  is that of the masked vector); a message that fails verification cannot be left out
  without dropout recovery, so the round is aborted (zero update, the rejected clients
  flagged: the one per-client fact the protocol can state).

Not modelled: dropout recovery by Shamir-shared seeds (Bonawitz et al.'s double masking),
so every participant must deliver every masked vector; transport attacks on masked
messages.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from byzbench.config import SecAggConfig, secagg_fraction_bits
from byzbench.crypto import ClientKeyring, PublicKeyRegistry

Protocol = Literal["secagg", "secagg+"]
PROTOCOLS: tuple[str, ...] = ("secagg", "secagg+")
_HKDF_INFO = b"byzbench secagg v1"


def plus_degree(n: int, degree: int | None = None) -> int:
    """SecAgg+'s neighbours per client among ``n``: ``degree`` or 2⌈log₂ n⌉, rounded up to
    even (a Harary graph H(n, k) with even k is k-regular) and capped at n − 1 (complete)."""
    k = 2 * math.ceil(math.log2(max(n, 2))) if degree is None else degree
    k += k % 2
    return min(k, n - 1)


def masking_graph(protocol: Protocol, n: int, degree: int | None,
                  rng: np.random.Generator) -> np.ndarray:
    """[n, n] bool symmetric adjacency (no self loops) of the pairs that mask each other:
    complete for ``secagg``; for ``secagg+`` a random Harary graph H(n, k) (k from
    :func:`plus_degree`): a random ring order, each client joined to its k/2 nearest on
    either side."""
    if protocol == "secagg":
        return ~np.eye(n, dtype=bool)
    if protocol != "secagg+":
        raise ValueError(f"unknown secure aggregation protocol '{protocol}' "
                         f"(allowed: {', '.join(PROTOCOLS)})")
    k = plus_degree(n, degree)
    if k >= n - 1:
        return ~np.eye(n, dtype=bool)
    order = rng.permutation(n)
    adj = np.zeros((n, n), dtype=bool)
    for step in range(1, k // 2 + 1):  # k/2 offsets, each a vectorized ring shift
        adj[order, np.roll(order, -step)] = True
    return adj | adj.T


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding in the ring Z_{2^bits}: x ↦ round(clip(x, ±bound) · 2^f)."""

    bits: int
    fraction_bits: int
    bound: float

    @property
    def modulus_mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    @property
    def step(self) -> float:
        """The quantization step 2^-f (rounding errs by at most half of it)."""
        return 2.0 ** -self.fraction_bits

    def encode(self, x: np.ndarray) -> np.ndarray:
        """uint64 ring elements of ``x`` (NaN → 0, ±Inf → ±bound: the ring holds no
        non-finite value)."""
        x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=self.bound,
                          neginf=-self.bound)
        q = np.rint(np.clip(x, -self.bound, self.bound) * 2.0 ** self.fraction_bits)
        return q.astype(np.int64).astype(np.uint64) & self.modulus_mask

    def decode(self, total: np.ndarray) -> np.ndarray:
        """float64 value of ring elements read as two's complement mod 2^bits."""
        signed = (total & self.modulus_mask).astype(np.int64)
        half = np.int64(1 << (self.bits - 1))
        signed = np.where(signed >= half, signed - np.int64(1 << self.bits), signed)
        return signed.astype(np.float64) * self.step


@dataclass
class Timings:
    """Seconds spent, summed over a round's secure sums: key agreement (key generation +
    X25519), HKDF, keystream generation, modular adds (encoding and masking), unmasking (the
    server's sum and decoding)."""

    key_agreement: float = 0.0
    hkdf: float = 0.0
    keystream: float = 0.0
    adds: float = 0.0
    unmask: float = 0.0

    @property
    def total(self) -> float:
        return self.key_agreement + self.hkdf + self.keystream + self.adds + self.unmask


class PairwiseMasks:
    """One round's key material: X25519 keys for ``client_ids``, one ChaCha20 key per edge of
    ``adjacency`` (rows in ``client_ids`` order); :meth:`mask` masks a round's s-th sum.

    Each edge's secret is computed once (both ends would compute the same value: a real
    client's work is its own edges only, so the per-client cost is this total × 2 / n)."""

    def __init__(self, client_ids: Sequence[int], adjacency: np.ndarray, round_: int,
                 timings: Timings | None = None) -> None:
        self.timings = timings if timings is not None else Timings()
        ids = [int(c) for c in client_ids]
        t0 = time.perf_counter()
        private = [X25519PrivateKey.generate() for _ in ids]
        public = [key.public_key() for key in private]
        pairs = np.argwhere(np.triu(adjacency, 1))
        self.pairs = pairs
        secrets = [private[i].exchange(public[j]) for i, j in pairs.tolist()]
        t1 = time.perf_counter()
        self.keys = [
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                 info=_HKDF_INFO + struct.pack(">qqq", round_, ids[i], ids[j])).derive(secret)
            for (i, j), secret in zip(pairs.tolist(), secrets)]
        t2 = time.perf_counter()
        self.timings.key_agreement += t1 - t0
        self.timings.hkdf += t2 - t1

    def mask(self, encoded: np.ndarray, step: int, modulus_mask: np.uint64) -> np.ndarray:
        """[n, k] uint64 masked vectors of the encoded rows ``encoded`` for the round's
        ``step``-th sum: row i + Σ_{j>i} m_ij − Σ_{j<i} m_ij mod 2^bits."""
        n, k = encoded.shape
        masked = np.array(encoded, dtype=np.uint64, copy=True)
        nonce = struct.pack("<IQI", 0, step, 0)  # ChaCha20: 32-bit counter, 96-bit nonce
        zeros = bytes(8 * k)
        ks = adds = 0.0
        for (i, j), key in zip(self.pairs.tolist(), self.keys):
            t0 = time.perf_counter()
            stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(zeros)
            words = np.frombuffer(stream, dtype=np.uint64)
            t1 = time.perf_counter()
            masked[i] += words  # uint64 arithmetic wraps mod 2^64, a multiple of 2^bits
            masked[j] -= words
            adds += time.perf_counter() - t1
            ks += t1 - t0
        t0 = time.perf_counter()
        masked &= modulus_mask
        self.timings.adds += adds + time.perf_counter() - t0
        self.timings.keystream += ks
        return masked


def unmask(masked: np.ndarray, modulus_mask: np.uint64) -> np.ndarray:
    """The server's step: Σ_i masked_i mod 2^bits (uint64 wraps mod 2^64)."""
    return masked.sum(axis=0, dtype=np.uint64) & modulus_mask


class SecureAbort(Exception):
    """A secure sum cannot complete: some masked messages failed signature verification
    and, without dropout recovery, their masks cannot be removed."""

    def __init__(self, rejected: np.ndarray) -> None:
        super().__init__(f"{int(rejected.sum())} masked message(s) failed verification")
        self.rejected = rejected


# A client-side computation: the round's (clipped) updates [n, d] → each client's quantity
# [n, k]; row i may depend only on row i and on what the server broadcast.
ClientFn = Callable[[torch.Tensor], torch.Tensor]
# An attack's deviation: (sum index, honest quantities [n, k], malicious [n] bool) → what
# every client submits [n, k] (only the malicious rows may differ).
Deviation = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Transcript:
    """What the server saw of one secure sum (kept when a channel records)."""

    masked: np.ndarray   # [n, k] uint64 masked vectors
    total: np.ndarray    # [k] float64 decoded sum
    fraction_bits: int
    bound: float


class Channel:
    """A defense's view of the round's clients under secure aggregation: the only thing it
    may do with their updates is :meth:`secure_sum`. ``n`` clients, ``dim`` coordinates."""

    def __init__(self, updates: torch.Tensor, config: SecAggConfig) -> None:
        # the clients' side: each client holds its own row, clipped to [-range, range]
        self._clients = torch.nan_to_num(updates.detach(), nan=0.0).clamp(-config.range,
                                                                         config.range)
        self.config = config
        self.n, self.dim = updates.shape
        self.sums = 0
        self.deviate: Deviation | None = None
        self.malicious: torch.Tensor | None = None

    @property
    def range(self) -> float:
        return self.config.range

    def require_signatures(self, registry: PublicKeyRegistry) -> None:
        """Verify every later sum's masked messages against ``registry`` (a no-op without
        masking: there is no masked message)."""

    def encoding(self, bound: float) -> FixedPoint:
        """The fixed point of a sum whose per-client quantities lie in [-bound, bound]."""
        f = secagg_fraction_bits(self.n, bound, self.config.bits, self.config.fraction_bits)
        if f < 0:
            raise ValueError(f"privacy.secagg.bits {self.config.bits} cannot hold a sum of "
                             f"{self.n} values bounded by {bound:g}")
        return FixedPoint(self.config.bits, f, float(bound))

    def _quantities(self, client_fn: ClientFn) -> torch.Tensor:
        values = client_fn(self._clients)
        if values.dim() != 2 or values.shape[0] != self.n:
            raise ValueError(f"a secure sum's client function must return [{self.n}, k] "
                             f"rows, got {tuple(values.shape)}")
        if self.deviate is not None and self.malicious is not None:
            out = self.deviate(self.sums, values, self.malicious)
            values = torch.where(self.malicious.to(values.device).unsqueeze(1),
                                 out.to(values.dtype), values)
        return values

    def secure_sum(self, client_fn: ClientFn, bound: float) -> torch.Tensor:
        """Σ_i q_i, where client i computes q_i = ``client_fn(updates)[i]`` from its own
        clipped update, clips it to [-bound, bound] and submits it through secure
        aggregation; the [k] float64 sum (exact up to each value's rounding, 2^-(f+1))."""
        raise NotImplementedError


class PlainChannel(Channel):
    """The same protocol without masks: the encoded quantities are summed in the clear.
    Its sums equal :class:`SecureChannel`'s bit for bit (masking is exact), so it is the
    attacker's offline copy of the protocol (the oracle) and the reference in tests."""

    def secure_sum(self, client_fn: ClientFn, bound: float) -> torch.Tensor:
        values = self._quantities(client_fn)
        enc = self.encoding(bound)
        total = unmask(enc.encode(values.detach().cpu().numpy()), enc.modulus_mask)
        self.sums += 1
        return torch.from_numpy(enc.decode(total)).to(values.device)


class SecureChannel(Channel):
    """Secure aggregation of one round (see the module docstring): every :meth:`secure_sum`
    masks the clients' encoded quantities with pairwise ChaCha20 masks from X25519 + HKDF
    and hands the server — and so the defense — only the sum. With a ``keyring`` every
    client signs each masked message; :meth:`require_signatures` makes the server verify
    them before unmasking."""

    def __init__(self, updates: torch.Tensor, config: SecAggConfig, protocol: Protocol,
                 client_ids: Sequence[int], round_: int, rng: np.random.Generator,
                 keyring: ClientKeyring | None = None, nonce: bytes | None = None,
                 record: bool = False) -> None:
        super().__init__(updates, config)
        self.protocol = protocol
        self.client_ids = [int(c) for c in client_ids]
        self.round = round_
        self.timings = Timings()
        self.adjacency = masking_graph(protocol, self.n, config.degree, rng)
        self._rng = rng
        self._masks: PairwiseMasks | None = None
        self.keyring = keyring
        self.nonce = nonce or b""
        self.registry: PublicKeyRegistry | None = None
        self.sign_seconds = 0.0
        self.verify_seconds = 0.0
        self.transcript: list[Transcript] | None = [] if record else None

    def require_signatures(self, registry: PublicKeyRegistry) -> None:
        """Verify every later sum's masked messages against ``registry``."""
        self.registry = registry

    def _signed(self, masked: np.ndarray) -> None:
        if self.keyring is None:
            return
        nonce = self.nonce + struct.pack(">I", self.sums)
        # the signed payload is the masked vector's bytes (viewed, not converted)
        payload = np.ascontiguousarray(masked).view(np.float32)
        messages, seconds = self.keyring.sign_round(self.client_ids, self.round, nonce,
                                                    payload)
        self.sign_seconds += seconds
        if self.registry is not None:
            start = time.perf_counter()
            valid, _ = self.registry.verify_round(messages, payload, self.round, nonce)
            ids_ok = np.array([m.client_id == c for m, c in zip(messages, self.client_ids)])
            self.verify_seconds += time.perf_counter() - start
            if not bool((valid & ids_ok).all()):
                raise SecureAbort(~(valid & ids_ok))

    def secure_sum(self, client_fn: ClientFn, bound: float) -> torch.Tensor:
        values = self._quantities(client_fn)
        if self._masks is None:  # the round's key agreement, once, at its first sum
            self._masks = PairwiseMasks(self.client_ids, self.adjacency, self.round,
                                        self.timings)
        enc = self.encoding(bound)
        t0 = time.perf_counter()
        encoded = enc.encode(values.detach().cpu().numpy())
        self.timings.adds += time.perf_counter() - t0
        masked = self._masks.mask(encoded, self.sums, enc.modulus_mask)
        self._signed(masked)
        t0 = time.perf_counter()
        total = enc.decode(unmask(masked, enc.modulus_mask))
        self.timings.unmask += time.perf_counter() - t0
        if self.transcript is not None:
            self.transcript.append(Transcript(masked, total, enc.fraction_bits, float(bound)))
        self.sums += 1
        return torch.from_numpy(total).to(values.device)


__all__ = ["PROTOCOLS", "Channel", "FixedPoint", "PairwiseMasks", "PlainChannel",
           "SecureAbort", "SecureChannel", "Timings", "Transcript", "masking_graph",
           "plus_degree", "unmask"]
