"""Defense-aware attacks (issue 12): hand-computed values, toy oracles, the engine's oracle."""

from __future__ import annotations

import math
import sys
import types
from typing import ClassVar

import pytest
import torch
from helpers import TINY_BASE

from byzbench.attacks._search import NoOracleError, hypothetical, line_maximize
from byzbench.attacks.adaptive import ALIEOpt, FangTrim, krum_lambda_bound
from byzbench.attacks.base import Attack, AttackContext
from byzbench.attacks.model import alie_z
from byzbench.config import grid_from_dict
from byzbench.defenses.base import Verdict
from byzbench.engine.simulation import run_cell
from byzbench.registry import ATTACKS


def make(name: str, **params) -> Attack:
    cls = ATTACKS.get(name)
    return cls(cls.Params(**params))


def ctx_for(n: int, malicious: list[int], oracle=None, knowledge: str = "full",
            seed: int = 0) -> AttackContext:
    mal = torch.zeros(n, dtype=torch.bool)
    mal[malicious] = True
    ref = ~mal if knowledge == "full" else mal.clone()
    return AttackContext(round=0, client_ids=torch.arange(n), malicious=mal, reference=ref,
                         generator=torch.Generator().manual_seed(seed), defense_name="x",
                         oracle=oracle)


def mean_oracle(rows: torch.Tensor) -> Verdict:
    n = rows.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=rows.dtype)
    return Verdict(aggregate=w @ rows, weights=w, flagged=None)


class CountingOracle:
    """Records every matrix it is shown; ``rule`` gives the verdict."""

    def __init__(self, rule) -> None:
        self.rule, self.seen = rule, []

    def __call__(self, rows: torch.Tensor) -> Verdict:
        self.seen.append(rows.clone())
        return self.rule(rows)


# ------------------------------------------------------------------------ the line search


def test_line_search_expands_then_contracts_and_never_loses_its_start():
    result = line_maximize(lambda x: -(x - 5.3) ** 2, start=1.0, delta=1.0, evals=12)
    xs = [x for x, _ in result.points]
    assert xs[:4] == [1.0, 2.0, 4.0, 8.0]  # expansion: step 1, 2, 4 until 8 is worse
    assert result.calls == 12 and abs(result.x - 5.3) < 0.7
    flat = line_maximize(lambda x: -x, start=2.0, delta=1.0, evals=6, lower=0.0)
    assert flat.x < 2.0 and min(x for x, _ in flat.points) >= 0.0
    assert line_maximize(lambda x: 1.0, start=3.0, delta=1.0, evals=5).x == 3.0


# --------------------------------------------------------------------------- fang_krum


def test_krum_lambda_bound_by_hand():
    # benign rows (d = 4): n = 7, f = 2 → n − f − 2 = 3 neighbours, n − 2f − 1 = 2
    b = torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0],
                      [0, 0, 0, 4]])
    # row 0: distances to the others 1, 2, 3, 4 → three closest sum 6 (the minimum over
    # rows); max norm 4; √d = 2
    assert krum_lambda_bound(b, n=7, f=2) == pytest.approx(6 / (2 * 2) + 4 / 2)


def test_fang_krum_halves_lambda_until_the_rule_selects_a_malicious_row():
    torch.manual_seed(0)
    honest = torch.tensor([[1.0, -2.0, 0.5, 3.0]]) + 0.1 * torch.randn(5, 4)
    updates = torch.cat([honest, torch.zeros(2, 4)])
    mal = [5, 6]
    bound = krum_lambda_bound(honest, n=7, f=2)

    def rule(rows: torch.Tensor) -> Verdict:
        # select a malicious row once its deviation from the honest mean is below 0.3
        far = (rows[5] - honest.mean(0)).norm() > 0.3 + honest.mean(0).norm()
        w = torch.zeros(7)
        w[0 if far else 5] = 1.0
        return Verdict(aggregate=w @ rows, weights=w, flagged=w == 0)

    oracle = CountingOracle(rule)
    attack = make("fang_krum", epsilon=0.01)
    out = attack.poison_updates(updates, ctx_for(7, mal, oracle))
    s = torch.sign(honest.mean(0))
    halvings = len(oracle.seen) - 1
    assert attack.last_lambda == pytest.approx(bound / 2 ** halvings)
    assert halvings >= 1
    assert torch.allclose(out[5], -attack.last_lambda * s)       # the crafted row
    assert (out[6] - out[5]).norm() <= 0.01 + 1e-7               # a supporter within ε
    assert torch.equal(out[:5], updates[:5])
    for earlier in oracle.seen[:-1]:  # each earlier λ was rejected
        assert not bool(rule(earlier).weights[5:].gt(0).any())


def test_fang_krum_gives_up_below_threshold_and_within_its_budget():
    never = CountingOracle(lambda rows: Verdict(
        aggregate=rows[0], weights=torch.eye(rows.shape[0])[0],
        flagged=torch.arange(rows.shape[0]) > 0))
    attack = make("fang_krum", evals=5)
    attack.poison_updates(torch.randn(7, 3), ctx_for(7, [5, 6], never))
    assert len(never.seen) == 5 and attack.last_calls == 5


def test_an_aware_attack_without_the_oracle_says_so():
    with pytest.raises(NoOracleError, match="fang_krum.*oracle"):
        make("fang_krum").poison_updates(torch.randn(5, 3), ctx_for(5, [4]))


# --------------------------------------------------------------------------- fang_trim


def test_fang_trim_full_knowledge_intervals_by_hand():
    # per coordinate (b = 2): mean −1, w_max = 2 > 0 → push up into [2, 4]; mean −1,
    # w_max = −0.5 → [−0.5, −0.25]; mean 1, w_min = 0.5 > 0 → push down into [0.25, 0.5];
    # mean 1, w_min = −1 → [−2, −1]
    ref = torch.tensor([[2.0, -0.5, 0.5, -1.0],
                        [-4.0, -1.5, 1.5, 3.0]])
    lo, hi = FangTrim.bounds(ref, b=2.0, partial=False)
    assert torch.allclose(lo, torch.tensor([2.0, -0.5, 0.25, -2.0]))
    assert torch.allclose(hi, torch.tensor([4.0, -0.25, 0.5, -1.0]))


def test_fang_trim_draws_inside_the_intervals_and_opposite_the_benign_direction():
    torch.manual_seed(1)
    honest = torch.randn(8, 50)
    updates = torch.cat([honest, torch.zeros(3, 50)])
    out = make("fang_trim").poison_updates(updates, ctx_for(11, [8, 9, 10]))
    lo, hi = FangTrim.bounds(honest, 2.0, partial=False)
    mal = out[8:]
    assert bool(((mal >= lo - 1e-6) & (mal <= hi + 1e-6)).all())
    assert not torch.equal(mal[0], mal[1])  # independent draws per client
    push_up = honest.mean(0) < 0
    assert bool((mal[:, push_up] >= honest.max(0).values[push_up] - 1e-6).all())
    assert bool((mal[:, ~push_up] <= honest.min(0).values[~push_up] + 1e-6).all())


def test_fang_trim_partial_knowledge_uses_mean_plus_three_to_four_std_of_own_rows():
    own = torch.tensor([[1.0, -1.0], [3.0, -3.0]])  # μ = (2, −2), σ = (√2, √2)
    lo, hi = FangTrim.bounds(own, 2.0, partial=True)
    r = math.sqrt(2)
    assert torch.allclose(lo, torch.tensor([2 - 4 * r, -2 + 3 * r]))
    assert torch.allclose(hi, torch.tensor([2 - 3 * r, -2 + 4 * r]))


# ----------------------------------------------------------------- searches on the oracle


def clipping_oracle(radius: float):
    """A toy rule: rows farther than ``radius`` from the coordinate-wise median are dropped,
    the rest averaged. Its damage peaks where the malicious rows sit just inside."""
    def rule(rows: torch.Tensor) -> Verdict:
        med = rows.median(dim=0).values
        keep = (rows - med).norm(dim=1) <= radius
        w = keep.to(rows.dtype) / keep.sum()
        return Verdict(aggregate=w @ rows, weights=w, flagged=~keep)
    return rule


def test_tailored_minmax_maximises_the_toy_rules_deviation():
    torch.manual_seed(2)
    honest = 0.1 * torch.randn(8, 6) + torch.tensor([1.0, 0, 0, 0, 0, 0])
    updates = torch.cat([honest, torch.zeros(2, 6)])
    rule = clipping_oracle(radius=0.6)
    tailored = make("minmax_tailored", perturbation="unit", evals=16)
    out = tailored.poison_updates(updates, ctx_for(10, [8, 9], rule))
    agnostic = make("minmax", perturbation="unit")
    plain = agnostic.poison_updates(updates, ctx_for(10, [8, 9]))
    mu = honest.mean(0)

    def damage(rows):
        return float((rule(rows).aggregate - mu).norm())

    assert tailored.last_search.points[0][0] == pytest.approx(agnostic.last_gamma)
    assert damage(out) >= damage(plain) - 1e-9
    # by a fine scan of γ, the best damage available on this direction
    p = -mu / mu.norm()
    scan = max(damage(torch.cat([honest, (mu + g * p).expand(2, 6)]))
               for g in torch.linspace(0, 3, 601).tolist())
    assert damage(out) >= 0.95 * scan
    assert len(tailored.last_search.points) <= 16


def test_alie_opt_starts_at_the_plain_z_and_is_never_weaker():
    torch.manual_seed(3)
    honest = torch.randn(8, 5)
    updates = torch.cat([honest, torch.zeros(2, 5)])
    rule = clipping_oracle(radius=2.0)
    attack = make("alie_opt")
    out = attack.poison_updates(updates, ctx_for(10, [8, 9], rule))
    z0 = alie_z(10, 2)
    assert attack.last_search.points[0][0] == pytest.approx(z0)
    assert attack.last_search.calls == 8
    mu, sd = honest.mean(0), honest.std(0)
    assert torch.allclose(out[8], mu - attack.last_strength * sd, atol=1e-6)
    plain = make("alie").poison_updates(updates, ctx_for(10, [8, 9]))

    def damage(rows):
        return float((rule(rows).aggregate - mu).norm())
    assert damage(out) >= damage(plain) - 1e-9


def test_ipm_opt_grows_epsilon_against_the_mean():
    honest = torch.tensor([[1.0, 1.0], [1.2, 0.8], [0.8, 1.2]])
    updates = torch.cat([honest, torch.zeros(1, 2)])
    attack = make("ipm_opt", evals=6)
    out = attack.poison_updates(updates, ctx_for(4, [3], mean_oracle))
    # against the mean, damage grows with ε: the search only expands (0.1, 1.1, 3.1, …)
    assert [x for x, _ in attack.last_search.points][:3] == pytest.approx([0.1, 1.1, 3.1])
    assert attack.last_strength == pytest.approx(31.1)
    assert torch.allclose(out[3], -31.1 * honest.mean(0))


def test_adaptive_wrapper_searches_the_declared_strength_on_a_log_scale():
    torch.manual_seed(4)
    honest = torch.randn(6, 4)
    updates = torch.cat([honest, torch.randn(2, 4)])
    attack = make("adaptive", attack={"name": "gaussian", "sigma": 1.0}, evals=5)
    assert attack.param == "sigma"
    oracle = CountingOracle(mean_oracle)
    ctx = ctx_for(8, [6, 7], oracle)
    state = ctx.generator.get_state()
    out = attack.poison_updates(updates, ctx)
    xs = [x for x, _ in attack.last_search.points]
    assert xs[:3] == [0.0, 1.0, 3.0] and attack.last_search.calls == 5
    assert attack.last_strength == pytest.approx(2.0 ** attack.last_search.x)
    # the same draws at every strength: the rows are σ × one fixed noise matrix
    ctx.generator.set_state(state)
    noise = make("gaussian", sigma=1.0).poison_updates(updates.clone(), ctx)[6:]
    assert torch.allclose(out[6:], attack.last_strength * noise, rtol=1e-5)
    assert torch.allclose(oracle.seen[0][6:], noise)  # t = 0 is the plain attack


def test_adaptive_refuses_what_it_cannot_wrap():
    with pytest.raises(ValueError, match="cannot be adapted"):
        make("adaptive", attack="backdoor")
    with pytest.raises(ValueError, match="cannot be adapted"):
        make("adaptive", attack="fang_krum")
    with pytest.raises(ValueError, match="declares no strength parameter"):
        make("adaptive", attack="mimic")
    with pytest.raises(ValueError, match="unknown attack"):
        make("adaptive", attack="alei")


def test_adaptive_passes_its_knowledge_to_the_wrapped_attack():
    attack = make("adaptive", attack="alie", knowledge="partial")
    assert attack.inner.knowledge == "partial"


def test_partial_knowledge_never_reads_the_honest_rows():
    torch.manual_seed(5)
    a = torch.randn(10, 6)
    b = a.clone()
    b[:7] = 100 * torch.randn(7, 6)   # other honest rows, same malicious ones
    rule = clipping_oracle(radius=3.0)
    for name in ("fang_krum", "fang_trim", "alie_opt", "ipm_opt", "minmax_tailored",
                 "minsum_tailored"):
        outs = [make(name, knowledge="partial").poison_updates(
            x, ctx_for(10, [7, 8, 9], rule, knowledge="partial", seed=9))[7:] for x in (a, b)]
        assert torch.equal(outs[0], outs[1]), name
    base = hypothetical(a, ctx_for(10, [7, 8, 9], knowledge="partial"))
    assert torch.equal(base[7:], a[7:]) and not torch.equal(base[:7], a[:7])


# ------------------------------------------------------------------------------ engine


class NeverSeesOracle(Attack):
    """An attack that ignores the rule: the engine must not give it the oracle."""

    paper: ClassVar[str] = "none (a test fixture)"
    seen: ClassVar[list[bool]] = []

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        NeverSeesOracle.seen.append(ctx.oracle is None)
        return -updates


@pytest.fixture
def fixture_module(monkeypatch):
    module = types.ModuleType("adaptive_fixtures")
    module.NeverSeesOracle = NeverSeesOracle
    module.RecordedALIEOpt, module.ReplayRows = RecordedALIEOpt, ReplayRows
    monkeypatch.setitem(sys.modules, "adaptive_fixtures", module)
    return module


def test_only_aware_attacks_receive_the_oracle(fixture_module):
    NeverSeesOracle.seen.clear()
    cell = grid_from_dict({"name": "o", "base": {
        **TINY_BASE, "malicious_fraction": 0.2, "rounds": 2,
        "attack": "adaptive_fixtures:NeverSeesOracle", "defense": "krum"}}).cells[0]
    assert run_cell(cell.config).status == "done"
    assert NeverSeesOracle.seen == [True, True]


class RecordedALIEOpt(ALIEOpt):
    """alie_opt (many oracle calls a round) that records the rows it sends."""

    sent: ClassVar[dict[int, torch.Tensor]] = {}

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        out = super().poison_updates(updates, ctx)
        RecordedALIEOpt.sent[ctx.round] = out.clone()
        return out


class ReplayRows(Attack):
    """Sends the recorded rows again, asking no oracle."""

    paper: ClassVar[str] = "none (a test fixture)"

    def poison_updates(self, updates: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return RecordedALIEOpt.sent[ctx.round]


@pytest.mark.parametrize("defense", ["reputation", "foolsgold", "centered_clipping",
                                     "norm_clip+reputation"])
def test_aware_attacks_leave_stateful_defenses_untouched(fixture_module, defense):
    """A cell under alie_opt (8 oracle calls a round) and a cell that replays the same rows
    with no oracle call give the same rounds: the oracle changed no defense state."""
    RecordedALIEOpt.sent.clear()
    cells = grid_from_dict({"name": "o", "base": {
        **TINY_BASE, "clients": 10, "malicious_fraction": 0.2, "rounds": 4},
        "grid": {"attack": ["adaptive_fixtures:RecordedALIEOpt",
                            "adaptive_fixtures:ReplayRows"],
                 "defense": [defense]}}).cells
    searched = run_cell(cells[0].config)
    replayed = run_cell(cells[1].config)
    assert searched.status == replayed.status == "done", (searched.error, replayed.error)
    assert len(RecordedALIEOpt.sent) == 4
    for a, b in zip(searched.rounds, replayed.rounds):
        assert (a.get("accuracy"), a["tp"], a["fp"]) == (b.get("accuracy"), b["tp"], b["fp"])


def test_every_aware_attack_runs_a_cell_against_krum_and_a_pipeline():
    attacks = ["fang_krum", "fang_trim", "alie_opt", "ipm_opt", "minmax_tailored",
               "minsum_tailored", {"name": "adaptive", "attack": "sign_flip"},
               {"name": "fang_krum", "knowledge": "partial", "label": "fk-partial"}]
    cells = grid_from_dict({"name": "a", "base": {**TINY_BASE, "malicious_fraction": 0.2,
                                                  "rounds": 2},
                            "grid": {"attack": attacks,
                                     "defense": ["krum", "norm_clip+trimmed_mean"]}}).cells
    for cell in cells:
        result = run_cell(cell.config)
        assert result.status == "done", (cell.axes, result.error)
        assert all(r["finite"] for r in result.rounds)


def test_threat_levels_follow_fangs_three_levels():
    assert make("fang_krum").threat_level == "full"
    assert make("alie_opt", knowledge="partial").threat_level == "partial"
    assert make("alie", knowledge="full").threat_level == "agnostic"  # the rule unknown
    assert make("sign_flip").threat_level == "agnostic"


# ------------------------------------------------------------- the oracle and signatures


class CountingKeyring:
    """Counts the engine's calls into the signing and verifying layers."""

    def __init__(self, monkeypatch) -> None:
        from byzbench.crypto import ClientKeyring, PublicKeyRegistry

        self.signed = self.verified = 0
        sign, verify = ClientKeyring.sign_round, PublicKeyRegistry.verify_round

        def counting_sign(keyring, *args, **kwargs):
            self.signed += 1
            return sign(keyring, *args, **kwargs)

        def counting_verify(registry, *args, **kwargs):
            self.verified += 1
            return verify(registry, *args, **kwargs)

        monkeypatch.setattr(ClientKeyring, "sign_round", counting_sign)
        monkeypatch.setattr(PublicKeyRegistry, "verify_round", counting_verify)


SAMPLED_CENTRAL_DP = {"clients_per_round": 6,
                      "privacy": {"dp": {"mode": "central", "sigma": 0.5}}}


@pytest.mark.parametrize("defense", ["signguard", "ecdsa+multikrum",
                                     "ecdsa+norm_clip+reputation"])
@pytest.mark.parametrize("attack", ["fang_krum", "alie_opt"])
@pytest.mark.parametrize("setting", [{}, SAMPLED_CENTRAL_DP], ids=["plain", "sampled-dp"])
def test_the_oracle_skips_signatures_and_changes_no_number(monkeypatch, attack, defense,
                                                          setting):
    """Oracle rows are their own clients', signed for the round, so every signature check of
    a preview passes: marking them ``authentic`` (no signing, no verifying) must give the
    very rounds that signing and verifying them gives (also with client sampling and the
    server's clipping under central DP)."""
    from byzbench.defenses.signature import Ecdsa

    cell = grid_from_dict({"name": "o", "base": {
        **TINY_BASE, "clients": 10, "malicious_fraction": 0.2, "rounds": 3,
        "attack": attack, "defense": defense, **setting}}).cells[0]
    counts = CountingKeyring(monkeypatch)
    skipping = run_cell(cell.config)
    assert skipping.status == "done", skipping.error
    # the real rounds alone sign and verify: one round each
    assert (counts.signed, counts.verified) == (3, 3)
    monkeypatch.setattr(Ecdsa, "trusts_authentic", False)
    counts.signed = counts.verified = 0
    signing = run_cell(cell.config)
    assert counts.signed > 3 and counts.verified > 3   # the oracle signed and verified
    for a, b in zip(skipping.rounds, signing.rounds):
        for key in ("accuracy", "loss", "tp", "fp", "fn", "tn", "diagnostics"):
            assert a.get(key) == b.get(key), (key, a.get(key), b.get(key))


def test_an_authentic_context_accepts_every_row_without_messages():
    from byzbench.crypto import ClientKeyring
    from byzbench.defenses.base import DefenseSetup, RoundContext
    from byzbench.defenses.signature import Ecdsa

    defense = Ecdsa()
    keyring = ClientKeyring(range(4), "ecdsa-p256")
    defense.setup(DefenseSetup(num_clients=4, clients_per_round=4, f=1, dim=3, seed=0,
                               device=torch.device("cpu"),
                               public_keys=keyring.public_registry()))
    rows = torch.arange(12, dtype=torch.float32).view(4, 3)
    ctx = RoundContext(round=0, client_ids=torch.arange(4), num_samples=torch.ones(4), f=1,
                       generator=torch.Generator(), global_params=torch.zeros(3),
                       nonce=b"n" * 16)
    with pytest.raises(RuntimeError, match="signed messages"):
        defense(rows, ctx)   # a real round without messages is an error, never a pass
    from dataclasses import replace
    verdict = defense(rows, replace(ctx, authentic=True))
    assert not verdict.flagged.any()
    assert torch.allclose(verdict.aggregate, rows.mean(dim=0))


def test_a_plugin_signature_check_gets_signed_oracle_rows(monkeypatch):
    """A defense that verifies signatures without declaring ``trusts_authentic`` (a plugin's
    check) still gets every oracle row signed as the clients would sign it."""
    from byzbench.defenses.signature import Ecdsa

    monkeypatch.setattr(Ecdsa, "trusts_authentic", False)
    seen: list[bool] = []
    aggregate = Ecdsa.aggregate

    def recording(self, updates, ctx):
        seen.append(ctx.messages is not None and not ctx.authentic)
        return aggregate(self, updates, ctx)

    monkeypatch.setattr(Ecdsa, "aggregate", recording)
    cell = grid_from_dict({"name": "o", "base": {
        **TINY_BASE, "clients": 10, "malicious_fraction": 0.2, "rounds": 2,
        "attack": "alie_opt", "defense": "ecdsa"}}).cells[0]
    assert run_cell(cell.config).status == "done"
    assert len(seen) > 2 and all(seen)
