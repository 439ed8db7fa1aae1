"""Secure aggregation (byzbench.privacy.secagg): the masking is exact and hides each vector,
the fixed point clips and rounds as stated, the SecAgg+ graph has its degree, and the
defenses' protocols equal their plaintext rules up to quantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from byzbench.config import CellConfig, SecAggConfig, secagg_fraction_bits
from byzbench.crypto import ClientKeyring
from byzbench.defenses.base import DefenseSetup, RoundContext
from byzbench.defenses.centered_clipping import CenteredClipping
from byzbench.defenses.fedavg import FedAvg
from byzbench.defenses.geomed import GeoMed
from byzbench.defenses.rlr import RobustLearningRate
from byzbench.privacy.secagg import (
    FixedPoint,
    PlainChannel,
    SecureAbort,
    SecureChannel,
    masking_graph,
    plus_degree,
)
from byzbench.registry import DEFENSES

PROTOCOLS = ["secagg", "secagg+"]


def _updates(n: int = 12, d: int = 300, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # inside the default range [-1, 1], so the clients' clipping changes nothing
    return (torch.randn(n, d, generator=gen, dtype=torch.float64) * scale).clamp(-0.99, 0.99)


def _channel(x: torch.Tensor, protocol: str = "secagg", record: bool = True,
             **config: object) -> SecureChannel:
    return SecureChannel(x, SecAggConfig(**config), protocol, range(100, 100 + x.shape[0]),
                         round_=7, rng=np.random.default_rng(3), record=record)


def _ctx(n: int, samples: torch.Tensor | None = None) -> RoundContext:
    counts = samples if samples is not None else torch.full((n,), 10.0, dtype=torch.float64)
    return RoundContext(round=0, client_ids=torch.arange(n), num_samples=counts, f=0,
                        generator=torch.Generator(), global_params=torch.zeros(1),
                        weights=torch.full((n,), 1.0 / n, dtype=torch.float64))


# -- the masking ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_masked_vectors_sum_exactly_to_the_quantized_sum(protocol):
    x = _updates()
    channel = _channel(x, protocol, bits=40)
    total = channel.secure_sum(lambda u: u, bound=1.0)
    (seen,) = channel.transcript
    enc = FixedPoint(40, seen.fraction_bits, 1.0)
    encoded = enc.encode(x.numpy())
    # every client's vector is masked (none equals its encoding) ...
    assert not (seen.masked == encoded).all(axis=1).any()
    # ... yet the masked vectors add up, mod 2^bits, to the sum of the encodings, exactly
    mod = 1 << 40
    want = [sum(int(v) for v in col) % mod for col in encoded.T[:50]]
    got = [sum(int(v) for v in col) % mod for col in seen.masked.T[:50]]
    assert got == want
    plain = PlainChannel(x, SecAggConfig(bits=40)).secure_sum(lambda u: u, bound=1.0)
    assert torch.equal(total, plain)


def test_masks_change_run_to_run_but_the_sum_does_not():
    x = _updates()
    a, b = _channel(x), _channel(x)
    sa, sb = a.secure_sum(lambda u: u, 1.0), b.secure_sum(lambda u: u, 1.0)
    assert torch.equal(sa, sb)
    assert not np.array_equal(a.transcript[0].masked, b.transcript[0].masked)  # fresh keys


def _top_bits_chi2(words: np.ndarray, bits: int, top: int = 4) -> float:
    """p-value of a chi-square test that the top ``top`` bits of ``words`` are uniform."""
    counts = np.bincount((words >> np.uint64(bits - top)).astype(np.int64),
                         minlength=2 ** top)
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["zeros", "structured"])
def test_a_single_masked_vector_looks_uniform(protocol, kind):
    n, d, bits = 8, 20_000, 32
    x = torch.zeros(n, d, dtype=torch.float64)
    if kind == "structured":
        x[:] = torch.linspace(-1, 1, d, dtype=torch.float64)
    channel = _channel(x, protocol, bits=bits)
    channel.secure_sum(lambda u: u, 1.0)
    masked = channel.transcript[0].masked
    encoded = FixedPoint(bits, channel.transcript[0].fraction_bits, 1.0).encode(x.numpy())
    # the test has power: the unmasked encoding of either input fails it outright
    assert _top_bits_chi2(encoded[0], bits) < 1e-12
    # each client's masked vector passes (false-failure probability 1e-6 per check)
    for row in (0, n - 1):
        assert _top_bits_chi2(masked[row], bits) > 1e-6
        ks = stats.kstest(masked[row].astype(np.float64) / 2.0 ** bits, "uniform")
        assert ks.pvalue > 1e-6


def test_signed_masked_messages_verify_and_a_foreign_registry_aborts():
    x = _updates(n=5, d=40)
    keyring = ClientKeyring(range(100, 105), "ed25519")
    channel = SecureChannel(x, SecAggConfig(), "secagg", range(100, 105), 1,
                            np.random.default_rng(0), keyring=keyring, nonce=b"n" * 16)
    channel.require_signatures(keyring.public_registry())
    channel.secure_sum(lambda u: u, 1.0)
    assert channel.sign_seconds > 0 and channel.verify_seconds > 0
    impostor = ClientKeyring(range(100, 105), "ed25519")  # other keys: every message fails
    channel.require_signatures(impostor.public_registry())
    with pytest.raises(SecureAbort) as abort:
        channel.secure_sum(lambda u: u, 1.0)
    assert abort.value.rejected.all()


# -- the fixed point -----------------------------------------------------------------------

def test_fixed_point_clips_at_the_range_and_rounds():
    enc = FixedPoint(bits=16, fraction_bits=2, bound=1.0)
    x = np.array([0.3, -0.3, 1.7, -5.0, 0.125, 0.375, np.nan, np.inf])
    # ×4: 1.2 → 1, −1.2 → −1, clipped ±4, 0.5 → 0 and 1.5 → 2 (half to even), NaN 0, Inf 4
    assert enc.encode(x).tolist() == [1, 2 ** 16 - 1, 4, 2 ** 16 - 4, 0, 2, 0, 4]
    assert enc.decode(enc.encode(x)).tolist() == [0.25, -0.25, 1.0, -1.0, 0.0, 0.5, 0.0, 1.0]


def test_default_fraction_bits_fill_the_ring():
    # 20 clients, range 1, 32 bits: 20·2^f ≤ 2^31 − 1 ⇔ f ≤ 26 (2^26·20 = 1 342 177 280)
    assert secagg_fraction_bits(20, 1.0, 32) == 26
    assert secagg_fraction_bits(20, 1.0, 32, cap=10) == 10


def test_bits_too_small_is_one_clear_config_error():
    with pytest.raises(ValueError) as err:
        CellConfig(clients=20, privacy={"secure_aggregation": "secagg",
                                        "secagg": {"bits": 8, "range": 100.0}})
    text = str(err.value)
    # 20·⌈100·2⌉ = 4000 ≤ 2^(b−1) − 1 needs b ≥ 13
    assert "privacy.secagg.bits 8 is too small for 20 clients" in text
    assert "allowed bits: 13..62" in text
    CellConfig(clients=20, privacy={"secure_aggregation": "secagg",
                                    "secagg": {"bits": 13, "range": 100.0}})
    # no privacy: the same settings are never checked
    CellConfig(clients=20, privacy={"secagg": {"bits": 8, "range": 100.0}})


# -- the SecAgg+ graph ---------------------------------------------------------------------

@pytest.mark.parametrize(("n", "degree", "want"), [(100, None, 14), (10, None, 8),
                                                    (1000, None, 20), (50, 5, 6), (6, None, 5)])
def test_secagg_plus_graph_has_the_stated_degree(n, degree, want):
    assert plus_degree(n, degree) == want  # 2⌈log₂ n⌉, even, at most n − 1
    adj = masking_graph("secagg+", n, degree, np.random.default_rng(1))
    assert (adj.sum(axis=1) == want).all()
    assert (adj == adj.T).all() and not adj.diagonal().any()
    again = masking_graph("secagg+", n, degree, np.random.default_rng(1))
    assert (adj == again).all()
    if want < n - 1:
        assert not (adj == masking_graph("secagg+", n, degree, np.random.default_rng(2))).all()


def test_secagg_graph_is_complete():
    adj = masking_graph("secagg", 7, None, np.random.default_rng(0))
    assert adj.sum() == 7 * 6 and not adj.diagonal().any()


# -- the defenses' protocols ----------------------------------------------------------------

def test_fedavg_under_secagg_equals_fedavg_up_to_quantization():
    n, bits = 20, 32
    x = _updates(n=n, d=500)
    samples = torch.arange(1, n + 1, dtype=torch.float64)
    ctx = _ctx(n, samples)
    plain = FedAvg()(x, ctx).aggregate
    secure = FedAvg().secure_aggregate(_channel(x, bits=bits), ctx)
    clipped = FedAvg().secure_aggregate(_channel(x * 3, bits=bits), ctx).aggregate
    assert (clipped - FedAvg()((x * 3).clamp(-1, 1), ctx).aggregate).abs().max() < 1e-6
    f = secagg_fraction_bits(n, 1.0, bits)
    assert f == 26
    err = (secure.aggregate - plain).abs().max().item()
    # each client's w_i·x_i is rounded to 2^-f: the sum errs by at most n·2^-(f+1)
    assert err <= n * 2.0 ** -(f + 1)
    assert err > 0  # quantization is real at 32 bits
    assert secure.flagged is None and torch.allclose(secure.weights, samples / samples.sum())


def test_geomed_protocol_equals_smoothed_weiszfeld():
    n = 10
    x = _updates(n=n, d=200)
    x[:3] = x[:3] * 0.5 + 0.45  # three outliers pull a mean, not a median (within ±1)
    ctx = _ctx(n)
    params = GeoMed.Params(init="mean", iters=8, nu=1e-6)
    plain = GeoMed(params)(x, ctx).aggregate
    secure = GeoMed(params).secure_aggregate(_channel(x), ctx).aggregate
    # 62 bits: f = 57 for 10 clients of bound 1; 9 sums of error ≤ 10·2^-58 each,
    # amplified by 1/Σβ̃ ≤ max‖x_i − v‖/ν ≈ 2·10^7: well below 1e-6
    assert (secure - plain).abs().max().item() < 1e-6
    mean = x.mean(0)
    assert (secure - mean).abs().max().item() > 1e-2  # it is not the mean


def test_centered_clipping_protocol_equals_plaintext_across_rounds():
    n = 10
    ctx = _ctx(n)
    params = CenteredClipping.Params(tau=0.5, iters=3)
    plain, secure = CenteredClipping(params), CenteredClipping(params)
    bits = 32
    for r in range(2):
        x = _updates(n=n, d=100, seed=r)
        p = plain(x, ctx).aggregate
        s = secure.secure_aggregate(_channel(x, bits=bits), ctx).aggregate
        # each iteration's sum errs by ≤ n·2^-(f+1) with f for the bound τ/n; three per round
        f = secagg_fraction_bits(n, 0.5 / n, bits)
        assert (s - p).abs().max().item() <= 3 * (r + 1) * n * 2.0 ** -(f + 1) + 1e-12
    assert CenteredClipping(CenteredClipping.Params(center="median")).secure_requirement() \
        .startswith("secure aggregation: centered_clipping with center 'median'")


def test_rlr_protocol_equals_plaintext():
    n = 9
    x = _updates(n=n, d=400)
    ctx = _ctx(n)
    defense = RobustLearningRate(RobustLearningRate.Params(threshold=4))
    plain = defense(x, ctx)
    secure = defense.secure_aggregate(_channel(x), ctx)
    assert (secure.aggregate - plain.aggregate).abs().max().item() < 1e-12
    assert secure.diagnostics["flipped"] == plain.diagnostics["flipped"] > 0


# -- declarations ---------------------------------------------------------------------------

def test_plaintext_fact_agrees_with_the_declaration_for_every_defense():
    for name in DEFENSES.names():
        defense = DEFENSES.get(name)()
        runs = defense.secure_requirement() is None
        assert runs == (not defense.privacy.needs_plaintext_updates), name
        assert runs == (defense.secure_view != "plaintext"), name
        if not runs:
            assert defense.secure_requirement().startswith("secure aggregation: "), name
        else:  # it implements the protocol it declares
            x = _updates(n=6, d=20)
            defense.setup(DefenseSetup(num_clients=6, clients_per_round=6, f=0, dim=20,
                                       seed=0, device=torch.device("cpu")))
            if defense.needs_signatures:
                continue  # needs a keyring: covered by the engine tests
            verdict = defense.secure_aggregate(PlainChannel(x, SecAggConfig()), _ctx(6))
            assert verdict.aggregate.shape == (20,) and torch.isfinite(verdict.aggregate).all()


def test_pipelines_run_only_when_every_layer_can():
    pipeline = DEFENSES.get("pipeline")
    ok = pipeline(pipeline.Params(layers=["ecdsa", "geomed"]))
    assert ok.secure_requirement() is None and ok.secure_view == "protocol"
    krum = pipeline(pipeline.Params(layers=["ecdsa", "multikrum"]))
    assert krum.secure_requirement().startswith("secure aggregation: layer 1 (multikrum)")
    assert krum.privacy.needs_plaintext_updates
    early = pipeline(pipeline.Params(layers=["fedavg", "geomed"]))
    assert "layer 0 (fedavg) would hand each client's row" in early.secure_requirement()
    assert early.privacy.needs_plaintext_updates  # the stated fact follows

