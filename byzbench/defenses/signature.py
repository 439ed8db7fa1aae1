"""Signature verification as a defense layer: authenticity, not honesty.

Each client signs the canonical bytes of (client id, round, server nonce, SHA-256 of its
update) with its own key (:mod:`byzbench.crypto`); the server recomputes the digest of the
payload it received and verifies against the public key registered for the claimed id.
Tampered payloads, replays (old round or nonce), unknown ids, messages re-labelled as
another client, messages signed by another key, malformed headers and messages dropped in
transit are rejected (flagged); none of them raises. A malicious
client that signs its own poisoned update passes: that is for later layers to catch.

Under secure aggregation the signed digest is that of each masked message
(:class:`~byzbench.privacy.secagg.SecureChannel`): the layer makes the server verify every
masked message before unmasking; one that fails aborts the round (without dropout recovery
its masks cannot be removed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field

from byzbench.crypto import PublicKeyRegistry, align_messages
from byzbench.defenses.base import (
    Defense,
    DefenseParams,
    DefenseSetup,
    Privacy,
    RoundContext,
    SecureView,
    Verdict,
)
from byzbench.defenses.geometry import mean_of, normalized_weights
from byzbench.registry import DEFENSES

if TYPE_CHECKING:
    from byzbench.privacy.secagg import Channel


class EcdsaParams(DefenseParams):
    scheme: Literal["ecdsa-p256", "ed25519"] = Field(
        "ecdsa-p256", description="client signature scheme: ECDSA P-256/SHA-256 or Ed25519")
    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="when run alone: weight accepted clients by sample count, "
                               "or equally (inside a pipeline the pipeline's weights flow)")


@DEFENSES.register("ecdsa")
class Ecdsa(Defense):
    """Signature verification layer (ECDSA P-256 with SHA-256, FIPS 186-4 / SEC 1; or
    Ed25519, RFC 8032): verify each client's signature over (id, round, nonce, SHA-256 of
    the update) against its registered public key; flagged = rejected messages (and
    non-finite payloads); aggregate = (sample-)weighted mean of the accepted updates."""

    Params: ClassVar[type[EcdsaParams]] = EcdsaParams
    paper: ClassVar[str] = ("NIST FIPS 186-4 Digital Signature Standard (ECDSA, P-256); "
                            "Bernstein et al., High-speed high-security signatures, CHES 2011 "
                            "(Ed25519)")
    privacy: ClassVar[Privacy] = Privacy(
        needs_plaintext_updates=False, needs_server_data=False, keeps_client_state=False,
        note="hashes each update as sent to verify it: the masked message under secure "
             "aggregation; stores only registered public keys")
    stateless: ClassVar[bool] = True
    secure_view: ClassVar[SecureView] = "signatures"
    trusts_authentic: ClassVar[bool] = True

    def __init__(self, params: EcdsaParams | None = None) -> None:
        super().__init__(params)
        self.public_keys: PublicKeyRegistry | None = None

    @property
    def signature_scheme(self) -> str:  # type: ignore[override]
        return self.params.scheme

    def setup(self, setup: DefenseSetup) -> None:
        super().setup(setup)
        keys = setup.public_keys
        if keys is not None and keys.scheme != self.params.scheme:
            raise ValueError(f"ecdsa expects '{self.params.scheme}' keys but the registry "
                             f"holds '{keys.scheme}' keys")
        self.public_keys = keys

    def initial_weights(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        if self.params.weighting == "samples":
            return ctx.num_samples.to(updates.device, updates.dtype)
        return super().initial_weights(updates, ctx)

    def verify(self, updates: torch.Tensor, ctx: RoundContext
               ) -> tuple[torch.Tensor, list[str | None], float]:
        """([n] bool: messages that verify and whose claimed id is the row's client id,
        the rejection reason of each row or None, the seconds verification took).

        A context marked ``authentic`` (an oracle's round: each row signed by its own
        client for this round and nonce) accepts every row without computing signatures:
        every one of them would verify."""
        if ctx.authentic:
            n = updates.shape[0]
            return torch.ones(n, dtype=torch.bool, device=updates.device), [None] * n, 0.0
        if self.public_keys is None:
            raise RuntimeError("ecdsa needs the registered public keys: setup() got none "
                               "(the engine signs updates when signature_scheme is set)")
        if ctx.messages is None or ctx.nonce is None:
            raise RuntimeError("ecdsa needs signed messages and the round's nonce in the "
                               "RoundContext (signing is off?)")
        rows = ctx.client_ids.to("cpu", torch.long).tolist()
        # what arrived, one header per row: dropped messages are None (rejected as missing)
        messages = align_messages(ctx.messages, rows)
        start = time.perf_counter()
        valid, reasons = self.public_keys.verify_round(messages, updates, ctx.round, ctx.nonce)
        seconds = time.perf_counter() - start
        same_id = [r is not None or getattr(m, "client_id", None) == c
                   for m, c, r in zip(messages, rows, reasons)]
        rejections = [r.value if r is not None else (None if s else "id_mismatch")
                      for r, s in zip(reasons, same_id)]
        accepted = (torch.as_tensor(valid, dtype=torch.bool)
                    & torch.tensor(same_id, dtype=torch.bool)).to(updates.device)
        return accepted, rejections, seconds

    def secure_prepare(self, channel: Channel) -> None:
        if self.public_keys is None:
            raise RuntimeError("ecdsa needs the registered public keys: setup() got none")
        channel.require_signatures(self.public_keys)

    def secure_aggregate(self, channel: Channel, ctx: RoundContext) -> Verdict:
        """Verify every masked message, then one secure sum of w_i·Δ_i (the weighted mean
        of the accepted clients, all of them: a rejection aborts the round)."""
        self.secure_prepare(channel)
        w = normalized_weights(ctx.weights.to(ctx.num_samples.device, torch.float64))
        total = channel.secure_sum(lambda x: w.to(x.device).unsqueeze(1) * x.double(),
                                   bound=channel.range)
        return Verdict(aggregate=total, weights=w,
                       flagged=torch.zeros(channel.n, dtype=torch.bool, device=w.device))

    def aggregate(self, updates: torch.Tensor, ctx: RoundContext) -> Verdict:
        accepted, rejections, seconds = self.verify(updates, ctx)
        w = torch.where(accepted, ctx.weights.to(updates.device, updates.dtype),
                        torch.zeros(updates.shape[0], dtype=updates.dtype,
                                    device=updates.device))
        if not bool(w.sum() > 0) and bool(accepted.any()):
            w = accepted.to(updates.dtype)
        w = normalized_weights(w)
        return Verdict(aggregate=mean_of(updates, w), weights=w, flagged=~accepted,
                       diagnostics={"rejection": rejections}, verify_seconds=seconds)
