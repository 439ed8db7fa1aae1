"""Client keys, signed update messages and their verification (the ``cryptography`` package).

Each client owns a real key pair — ECDSA on P-256 with SHA-256 by default, Ed25519 as an
option — generated in memory for one cell. A client signs the canonical bytes of
``(client id, round, server nonce, SHA-256 of its update)``; the server recomputes the
digest from the payload it *received* and verifies the signature against the public key
registered for the claimed client id. Tampered payloads, replays (wrong round or nonce),
unknown ids and signatures by another key all fail verification.

Headers are attacker-controlled: a header that cannot be a client's (a field of the wrong
type, a round or id outside the signed 64-bit range, a nonce longer than 65,535 bytes), a
message dropped in transit (``None``, or no message for a row's client) and a high-S ECDSA
signature are *rejections* of that row (``malformed``, ``missing``, ``bad_signature``),
never an exception: one client cannot stop a round. ECDSA signatures are accepted only in
low-S form (S ≤ n/2, as Bitcoin's BIP 146 requires): the server rejects the malleated twin
(r, n − S) that ``cryptography`` would accept, so each signed message has exactly one valid
encoding; clients sign low-S. Ed25519 is non-malleable already (RFC 8032: S < L is checked).

Private keys never leave memory: :class:`ClientKeyring` refuses to be pickled or copied,
and nothing in byzbench serialises a private key.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

Scheme = Literal["ecdsa-p256", "ed25519"]
SCHEMES: tuple[str, ...] = ("ecdsa-p256", "ed25519")
_DOMAIN = b"byzbench/update/v1"
_ECDSA = ec.ECDSA(hashes.SHA256())
# the order n of P-256's base point; a low-S signature has S <= n // 2
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_INT64 = (-(1 << 63), (1 << 63) - 1)
MAX_NONCE_BYTES = 0xFFFF  # the canonical encoding stores the nonce length in 2 bytes


class Rejection(str, Enum):
    """Why the server rejected a message."""

    BAD_SIGNATURE = "bad_signature"  # payload or header altered, or signed by another key
    WRONG_ROUND = "wrong_round"      # a message of another round (replay)
    WRONG_NONCE = "wrong_nonce"      # the nonce of another server challenge (replay)
    UNKNOWN_CLIENT = "unknown_client"  # no public key registered for the claimed id
    MALFORMED = "malformed"          # a header no client can have sent (bad type or range)
    MISSING = "missing"              # no message for the row (dropped in transit)


@dataclass(frozen=True)
class SignedMessage:
    """The header a client sends beside its update payload (one row of the update matrix)."""

    client_id: int
    round: int
    nonce: bytes
    signature: bytes


def update_digests(updates: torch.Tensor | np.ndarray) -> list[bytes]:
    """SHA-256 of each row's float32 bytes: one host copy of the matrix, one hash per client."""
    if isinstance(updates, torch.Tensor):
        updates = updates.detach().to("cpu", torch.float32).contiguous().numpy()
    rows = np.ascontiguousarray(updates, dtype=np.float32)
    return [hashlib.sha256(row.tobytes()).digest() for row in rows]


def signed_bytes(client_id: int, round_: int, nonce: bytes, digest: bytes) -> bytes:
    """The canonical byte string that is signed: domain tag, id, round, nonce, digest."""
    return b"".join((_DOMAIN, struct.pack(">qqH", client_id, round_, len(nonce)), nonce, digest))


class _KeyPair:
    __slots__ = ("_private", "public", "scheme")

    def __init__(self, scheme: Scheme) -> None:
        self.scheme = scheme
        if scheme == "ecdsa-p256":
            self._private = ec.generate_private_key(ec.SECP256R1())
        elif scheme == "ed25519":
            self._private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"unknown signature scheme '{scheme}' (allowed: {', '.join(SCHEMES)})")
        self.public = self._private.public_key()

    def sign(self, data: bytes) -> bytes:
        return sign_bytes(self._private, data)


def sign_bytes(private_key: object, data: bytes) -> bytes:
    """A client's signature of ``data`` with an Ed25519 or ECDSA P-256 private key; ECDSA in
    low-S form, the only form :func:`verify_signature` accepts."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    return low_s(private_key.sign(data, _ECDSA))  # type: ignore[attr-defined]


def low_s(signature: bytes) -> bytes:
    """The DER ECDSA (P-256) signature in its low-S form: (r, n − S) when S > n/2."""
    r, s = decode_dss_signature(signature)
    return signature if s <= P256_ORDER // 2 else encode_dss_signature(r, P256_ORDER - s)


def verify_signature(public_key: object, scheme: Scheme, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid signature of ``data``; ECDSA only in low-S form.
    Never raises on a malformed signature (it is just invalid)."""
    if not isinstance(signature, bytes):
        return False
    try:
        if scheme == "ecdsa-p256":
            if decode_dss_signature(signature)[1] > P256_ORDER // 2:
                return False  # the malleated (high-S) twin of a signature
            public_key.verify(signature, data, _ECDSA)  # type: ignore[attr-defined]
        else:
            public_key.verify(signature, data)  # type: ignore[attr-defined]
    except (InvalidSignature, ValueError):  # ValueError: not a DER signature
        return False
    return True


def _is_int64(value: object) -> bool:
    return (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            and _INT64[0] <= int(value) <= _INT64[1])


def malformed(msg: object) -> bool:
    """Whether a received header cannot be encoded canonically (so no client signed it):
    not a :class:`SignedMessage`, an id or round that is not a signed 64-bit integer, a
    nonce that is not bytes of at most 65,535, a signature that is not bytes."""
    return not (isinstance(msg, SignedMessage) and _is_int64(msg.client_id)
                and _is_int64(msg.round) and isinstance(msg.nonce, bytes)
                and len(msg.nonce) <= MAX_NONCE_BYTES and isinstance(msg.signature, bytes))


def align_messages(messages: Sequence[object], client_ids: Sequence[int]
                   ) -> list[object]:
    """The received headers paired with the round's rows (one per client id, in order).

    One message per row: paired by position, as sent (a ``None`` entry is a message dropped
    in transit). Any other count (messages dropped or injected): each row gets the first
    message that claims its client id, ``None`` (missing) when none does.
    """
    received = list(messages)
    ids = [int(c) for c in client_ids]
    if len(received) == len(ids):
        return received
    by_id: dict[int, object] = {}
    for msg in received:
        claimed = getattr(msg, "client_id", None)
        if _is_int64(claimed):
            by_id.setdefault(int(claimed), msg)  # type: ignore[arg-type]
    return [by_id.get(c) for c in ids]


class ClientKeyring:
    """The private keys of every client of a federation, held in memory for one cell."""

    def __init__(self, client_ids: Sequence[int], scheme: Scheme = "ecdsa-p256") -> None:
        self.scheme: Scheme = scheme
        self._keys = {int(c): _KeyPair(scheme) for c in client_ids}

    def __reduce__(self):  # noqa: D105 - refuse pickling: private keys stay in this process
        raise TypeError("ClientKeyring holds private keys and cannot be pickled")

    def __copy__(self):
        raise TypeError("ClientKeyring holds private keys and cannot be copied")

    __deepcopy__ = __copy__  # type: ignore[assignment]

    def public_registry(self) -> PublicKeyRegistry:
        """The server's view: client id → public key."""
        return PublicKeyRegistry({c: k.public for c, k in self._keys.items()}, self.scheme)

    def sign(self, client_id: int, round_: int, nonce: bytes, digest: bytes) -> SignedMessage:
        """Client ``client_id`` signs its update digest for this round and nonce."""
        sig = self._keys[client_id].sign(signed_bytes(client_id, round_, nonce, digest))
        return SignedMessage(client_id, round_, nonce, sig)

    def sign_round(self, client_ids: Sequence[int], round_: int, nonce: bytes,
                   updates: torch.Tensor) -> tuple[list[SignedMessage], float]:
        """Every listed client signs its row of ``updates``; returns messages and seconds spent."""
        start = time.perf_counter()
        digests = update_digests(updates)
        messages = [self.sign(int(c), round_, nonce, dg) for c, dg in zip(client_ids, digests)]
        return messages, time.perf_counter() - start


class AttackerKey:
    """A key pair that belongs to an attacker, not to any registered client."""

    def __init__(self, scheme: Scheme = "ecdsa-p256") -> None:
        self._pair = _KeyPair(scheme)

    def __reduce__(self):  # noqa: D105
        raise TypeError("AttackerKey holds a private key and cannot be pickled")

    def forge(self, client_id: int, round_: int, nonce: bytes, digest: bytes) -> SignedMessage:
        """A message claiming to be ``client_id`` but signed with the attacker's key."""
        return SignedMessage(client_id, round_, nonce,
                             self._pair.sign(signed_bytes(client_id, round_, nonce, digest)))


class PublicKeyRegistry:
    """The server's registered public keys; verifies a round's messages against payloads."""

    def __init__(self, keys: dict[int, object], scheme: Scheme) -> None:
        self._keys = dict(keys)
        self.scheme: Scheme = scheme

    def __contains__(self, client_id: int) -> bool:
        return client_id in self._keys

    def verify_round(self, messages: Sequence[SignedMessage | None], payloads: torch.Tensor,
                     round_: int, nonce: bytes) -> tuple[np.ndarray, list[Rejection | None]]:
        """Check each message against its payload row (one message per row, ``None`` for a
        row whose message was dropped); returns (valid mask, reasons). Never raises on what
        a client or the network sent."""
        digests = update_digests(payloads)
        if len(messages) != len(digests):
            raise ValueError(f"{len(messages)} messages for {len(digests)} payload rows "
                             "(pair them first: align_messages)")
        reasons: list[Rejection | None] = []
        for msg, digest in zip(messages, digests):
            reasons.append(self._check(msg, digest, round_, nonce))
        valid = np.array([r is None for r in reasons], dtype=bool)
        return valid, reasons

    def _check(self, msg: SignedMessage | None, digest: bytes, round_: int,
               nonce: bytes) -> Rejection | None:
        if msg is None:
            return Rejection.MISSING
        if malformed(msg):
            return Rejection.MALFORMED
        key = self._keys.get(int(msg.client_id))
        if key is None:
            return Rejection.UNKNOWN_CLIENT
        data = signed_bytes(int(msg.client_id), int(msg.round), msg.nonce, digest)
        if not verify_signature(key, self.scheme, msg.signature, data):
            return Rejection.BAD_SIGNATURE
        if msg.round != round_:
            return Rejection.WRONG_ROUND
        if msg.nonce != nonce:
            return Rejection.WRONG_NONCE
        return None
