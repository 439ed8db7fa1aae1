"""The backdoor protocol (issue 14): the attack window (end_round) for every attack stage,
durability of a backdoor after its attacker stops, and the dba, blended, neurotoxin and pgd
attacks against hand computations."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_BASE, write_grid

from byzbench.attacks.base import Attack, AttackContext, AttackSetup
from byzbench.config import CellConfig, ComponentSpec, ConfigError, grid_from_dict, load_grid
from byzbench.engine.simulation import CellResult, Simulation, run_cell
from byzbench.metrics import durability, last_active_round
from byzbench.registry import ATTACKS
from byzbench.report.build import build_report
from byzbench.report.tables import durability_frame, recovery_text
from byzbench.store import ResultsStore


def make(name: str, **kwargs):
    cls = ATTACKS.get(name)
    return cls(cls.Params(**kwargs))


def setup_for(attack, input_shape=(1, 8, 8)):
    attack.setup(AttackSetup(num_clients=10, num_classes=10, input_shape=tuple(input_shape),
                             rounds=5, seed=0, defense_name="fedavg",
                             device=torch.device("cpu")))
    return attack


def ctx_for(n: int, malicious: list[int], global_params: torch.Tensor | None = None
            ) -> AttackContext:
    mal = torch.zeros(n, dtype=torch.bool)
    mal[malicious] = True
    return AttackContext(round=0, client_ids=torch.arange(n), malicious=mal, reference=~mal,
                         generator=torch.Generator().manual_seed(0), defense_name="fedavg",
                         global_params=global_params)


# ------------------------------------------------------------------------- attack window


def test_end_round_bounds_the_window_of_every_attack():
    for name in ATTACKS.names():
        attack = make(name, start_round=2, every=3, end_round=8)
        assert [r for r in range(12) if attack.active(r)] == [2, 5, 8], name
        assert attack.last_active_round(12) == 8 and attack.last_active_round(7) == 5
    single = make("backdoor", start_round=4, end_round=4)
    assert [r for r in range(10) if single.active(r)] == [4]
    assert make("sign_flip").last_active_round(30) == 29


def test_last_active_round_by_hand():
    assert last_active_round(0, 1, None, 40) == 39
    assert last_active_round(0, 1, 19, 40) == 19
    assert last_active_round(3, 4, 17, 40) == 15     # 3, 7, 11, 15 (19 > 17)
    assert last_active_round(5, 1, 50, 10) == 9       # the run ends first
    assert last_active_round(12, 1, None, 10) is None  # never acts


def test_end_round_before_start_round_is_a_clear_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"end_round \(3\) is before start_round \(5\)"):
        ATTACKS.get("tamper").Params(start_round=5, end_round=3)
    path = write_grid(tmp_path / "bad.yaml", {
        "name": "bad", "base": TINY_BASE,
        "grid": {"attack": [{"name": "backdoor", "start_round": 5, "end_round": 3}]}})
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert "end_round (3) is before start_round (5)" in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_end_round_none_keeps_the_cell_ids_of_older_grids():
    plain = grid_from_dict({"name": "g", "base": TINY_BASE,
                            "grid": {"attack": ["backdoor"]}}).cells[0]
    assert "end_round" not in plain.config.attack.params
    explicit = grid_from_dict({"name": "g", "base": TINY_BASE,
                               "grid": {"attack": [{"name": "backdoor",
                                                    "end_round": None}]}}).cells[0]
    bounded = grid_from_dict({"name": "g", "base": TINY_BASE,
                              "grid": {"attack": [{"name": "backdoor",
                                                   "end_round": 2}]}}).cells[0]
    assert explicit.id == plain.id and bounded.id != plain.id


def _cell(attack: dict, defense: str = "fedavg", rounds: int = 5) -> CellConfig:
    attack = dict(attack)
    spec = ComponentSpec(name=attack.pop("name"), params=attack)
    layers = defense.split("+")
    defense_spec = (ComponentSpec(name="pipeline", params={"layers": layers})
                    if len(layers) > 1 else ComponentSpec(name=defense))
    return CellConfig(model=ComponentSpec(name="mlp", params={"hidden": [16]}), clients=6,
                      rounds=rounds, local={"steps": 2, "batch_size": 16, "lr": 0.1},
                      eval_every=1, malicious_fraction=0.34, attack=spec,
                      defense=defense_spec)


@pytest.mark.parametrize("attack, defense", [
    ({"name": "backdoor"}, "fedavg"),             # data
    ({"name": "dba"}, "fedavg"),                  # data, per-client triggers
    ({"name": "sign_flip"}, "fedavg"),            # update
    ({"name": "pgd", "scale": 3.0}, "fedavg"),    # data + update
    ({"name": "tamper"}, "ecdsa+fedavg"),         # transport
])
def test_end_round_stops_every_attack_kind_in_the_engine(attack, defense, monkeypatch):
    """Rounds 1..2 attacked, 0 and 3..4 not: ground truth, the hooks the engine calls and
    the data it trains on follow the window."""
    calls: dict[str, list[int]] = {"updates": [], "intercept": [], "poisoned": []}
    cls = ATTACKS.get(attack["name"])
    original_updates, original_intercept = cls.poison_updates, cls.intercept

    def spy_updates(self, updates, ctx):
        calls["updates"].append(ctx.round)
        return original_updates(self, updates, ctx)

    def spy_intercept(self, updates, messages, ctx):
        calls["intercept"].append(ctx.round)
        return original_intercept(self, updates, messages, ctx)

    monkeypatch.setattr(cls, "poison_updates", spy_updates)
    monkeypatch.setattr(cls, "intercept", spy_intercept)
    sim = Simulation(_cell({**attack, "start_round": 1, "end_round": 2}, defense))
    original_train = sim._train

    def spy_train(index, counts, x, y, *purpose):
        poisoned = sim.data.poisoned_index
        if poisoned is not None and torch.equal(index, poisoned[torch.arange(len(index))]):
            calls["poisoned"].append(purpose[0])
        return original_train(index, counts, x, y, *purpose)

    sim._train = spy_train
    rows = sim.run()
    assert [r["malicious"] for r in rows] == [0, 2, 2, 0, 0]
    hook = "intercept" if cls.stage == "transport" else "updates"
    assert calls[hook] == [1, 2]
    if cls.stage == "data":
        assert calls["poisoned"] == [1, 2]
    else:
        assert sim.data.poisoned_index is None


def test_data_attack_outside_its_window_trains_like_no_attack():
    """Before start_round and after end_round the malicious clients train on clean data: a
    backdoor active only in round 9 of a 3-round run gives the no-attack numbers."""
    attacked = run_cell(_cell({"name": "backdoor", "start_round": 9}, rounds=3))
    clean = run_cell(_cell({"name": "none"}, rounds=3))
    assert [r["accuracy"] for r in attacked.rounds] == [r["accuracy"] for r in clean.rounds]
    assert attacked.summary["last_active_round"] is None


# ----------------------------------------------------------------------------- durability


ROUNDS = [{"round": r, "asr": a} for r, a in
          [(4, 0.1), (9, 0.9), (14, 0.8), (19, 0.5), (24, 0.3), (29, 0.15), (34, 0.1)]] + \
         [{"round": r, "asr": None} for r in (0, 1, 2, 3, 10)]


def test_durability_on_hand_made_rounds():
    d = durability(ROUNDS, 9)
    assert d == {"last_active_round": 9, "asr_end": 0.9, "asr_after_10": 0.5,
                 "asr_after_20": 0.15, "asr_recovery_rounds": 20, "asr_horizon": 25}
    # L between evaluations: the end is the next evaluation; +10 → round 24, +20 → 34
    d = durability(ROUNDS, 12)
    assert (d["asr_end"], d["asr_after_10"], d["asr_after_20"]) == (0.8, 0.3, 0.1)
    assert d["asr_recovery_rounds"] == 17 and d["asr_horizon"] == 22
    # too short a run for +20; never below 20%
    d = durability(ROUNDS[:4], 9)
    assert d["asr_after_10"] == 0.5 and d["asr_after_20"] is None
    assert d["asr_recovery_rounds"] is None and d["asr_horizon"] == 10
    # already below 20% at the end of the attack
    assert durability(ROUNDS, 34)["asr_recovery_rounds"] == 0
    assert durability(ROUNDS, None) == dict.fromkeys(d) | {"last_active_round": None}


def test_engine_stores_durability_of_a_backdoor_cell(tmp_path):
    result = run_cell(_cell({"name": "backdoor", "end_round": 1}, rounds=4))
    s = result.summary
    asr = {r["round"]: r["asr"] for r in result.rounds}
    assert s["last_active_round"] == 1 and s["asr_end"] == asr[1]
    assert s["asr_after_10"] is None and s["asr_horizon"] == 2
    grid = grid_from_dict({"name": "g", "base": TINY_BASE, "grid": {"attack": ["backdoor"]}})
    with ResultsStore.create(tmp_path) as store:
        store.record("g", grid.cells[0], result)
        row = store.cell_rows()[0]
    assert row["last_active_round"] == 1 and row["asr_end"] == pytest.approx(asr[1])


def test_report_durability_table_from_hand_made_rounds(tmp_path):
    """Two seeds of one backdoor cell, rounds written by hand: the table's numbers are the
    definition's, averaged over seeds."""
    grid = grid_from_dict({"name": "g", "base": {**TINY_BASE, "rounds": 40},
                           "grid": {"attack": [{"name": "backdoor", "end_round": 19}],
                                    "defense": ["fedavg"], "malicious_fraction": [0.2],
                                    "seed": [0, 1]}})
    curves = {0: [0.9, 0.7, 0.5, 0.3, 0.1], 1: [0.8, 0.8, 0.6, 0.4, 0.3]}
    with ResultsStore.create(tmp_path) as store:
        store.register_grid(grid)
        for cell in grid.cells:
            asr = curves[cell.config.seed]
            rounds = [{"round": r, "n": 6, "malicious": int(r <= 19), "finite": True,
                       **({"accuracy": 0.9, "asr": asr[(r - 19) // 5]}
                          if r >= 19 and (r - 19) % 5 == 0 else {})} for r in range(40)]
            summary = {"accuracy": 0.9, "asr": asr[-1]}  # no durability stored: from config
            store.record("g", cell, CellResult(status="done", summary=summary, rounds=rounds))
    report = build_report(tmp_path)
    tidy = durability_frame(report.data)
    row = tidy.iloc[0]
    assert row["last_active_round"] == 19
    assert row["asr_end_mean"] == pytest.approx(0.85)
    assert row["asr_after_10_mean"] == pytest.approx(0.55)       # round 29: 0.5, 0.6
    assert row["asr_after_20_mean"] == pytest.approx(0.2)        # round 39: 0.1, 0.3
    assert row["recovered"] == 1 and row["seeds"] == 2 and row["recovery_mean"] == 20
    assert recovery_text(row) == "20 (1 of 2)"
    table = next(t for t in report.tables if t.key == "backdoor_durability")
    shown = table.sections[0].frame.iloc[0]
    assert shown["ASR at end %"] == "85.0 ± 7.1" and shown["ASR +20 rounds %"] == "20.0 ± 14.1"


# -------------------------------------------------------------------------------- dba


def test_dba_local_patterns_by_hand():
    attack = setup_for(make("dba", value=7.0, poison_fraction=1.0, target=1))
    masks = attack.local_masks((1, 8, 8))
    # a 3×5 box in the bottom-right corner: rows 5 and 7, columns 3–4 and 6–7
    want = [(5, [3, 4]), (5, [6, 7]), (7, [3, 4]), (7, [6, 7])]
    for k, (row, cols) in enumerate(want):
        plane = torch.zeros(8, 8, dtype=torch.bool)
        plane[row, cols] = True
        assert torch.equal(masks[k, 0], plane), k
    x = torch.zeros(6, 1, 8, 8)
    y = torch.tensor([0, 2, 3, 4, 5, 6])
    owner = torch.tensor([0, 1, 2, 3, 4, 5])                     # 4 → pattern 0, 5 → 1
    xp, yp = attack.poison_client_data(x, y, owner, torch.Generator().manual_seed(0))
    assert (yp == 1).all()
    for i, k in enumerate([0, 1, 2, 3, 0, 1]):
        assert torch.equal(xp[i, 0] == 7.0, masks[k, 0]), i
    xt, yt = attack.triggered_testset(torch.zeros(3, 1, 8, 8), torch.tensor([1, 0, 9]))
    assert xt.shape[0] == 2 and (yt == 1).all()
    assert int((xt[0] == 7.0).sum()) == 8                        # the full global trigger


def test_dba_in_the_engine_gives_each_malicious_client_its_own_pattern():
    sim = Simulation(_cell({"name": "dba", "value": 99.0, "poison_fraction": 1.0}))
    masks = sim.attack.local_masks(tuple(sim.data.x.shape[1:]))
    mal = [int(i) for i in torch.nonzero(torch.from_numpy(sim.malicious)).flatten()]
    assert len(mal) == 2
    for rank, client in enumerate(mal):
        count = int(sim.data.counts[client])
        x = sim.data.x[sim.data.poisoned_index[client, :count]]
        assert torch.equal((x == 99.0).all(dim=0), masks[rank])
        assert not (x == 99.0)[:, ~masks[rank]].any()


# ---------------------------------------------------------------------------- blended


def test_blended_by_hand():
    attack = setup_for(make("blended", alpha=0.25, pattern="checkerboard",
                            poison_fraction=1.0, target=2))
    x = torch.zeros(2, 1, 8, 8)
    x[1] = 1.0                                                   # data range [0, 1]
    xp, yp = attack.poison_data(x, torch.tensor([0, 3]), torch.Generator().manual_seed(0))
    assert (yp == 2).all()
    assert xp[0, 0, 0, 0] == 0.25 and xp[0, 0, 0, 1] == 0.0     # 0.75·0 + 0.25·{1, 0}
    assert xp[1, 0, 0, 0] == 1.0 and xp[1, 0, 0, 1] == 0.75     # 0.75·1 + 0.25·{1, 0}
    noise = setup_for(make("blended", alpha=0.5, pattern_seed=3))
    key = torch.rand((1, 8, 8), generator=torch.Generator().manual_seed(3))
    xt, _ = noise.triggered_testset(x, torch.tensor([1, 1]))
    assert torch.allclose(xt, 0.5 * x + 0.5 * key.unsqueeze(0))
    with pytest.raises(ValueError):
        setup_for(make("blended", pattern="checkerboard"), input_shape=(10,))


# ------------------------------------------------------------------------- neurotoxin


def test_neurotoxin_drops_the_top_k_percent_benign_coordinates():
    attack = setup_for(make("neurotoxin", top_k_percent=40, estimate="reference"))
    updates = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0],          # malicious
                            [0.1, -5.0, 0.2, 3.0, 0.0],
                            [0.1, -5.0, 0.2, 3.0, 0.0]])
    out = attack.poison_updates(updates, ctx_for(3, [0]))
    assert out[0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]         # ⌈0.4·5⌉ = 2 dropped
    assert torch.equal(out[1:], updates[1:])


def test_neurotoxin_global_estimate_is_the_previous_global_update():
    attack = setup_for(make("neurotoxin", top_k_percent=20))      # ⌈0.2·5⌉ = 1 dropped
    updates = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [9.0, 0.0, 0.0, 0.0, 0.0]])
    theta0 = torch.zeros(5)
    first = attack.poison_updates(updates, ctx_for(2, [0], theta0))
    assert first[0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]       # first round: honest rows
    theta1 = torch.tensor([0.0, 0.0, -4.0, 0.0, 0.0])
    second = attack.poison_updates(updates, ctx_for(2, [0], theta1))
    assert second[0].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]      # θ1 − θ0


# -------------------------------------------------------------------------------- pgd


def test_pgd_projects_onto_the_eps_ball_then_scales():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])
    out = setup_for(make("pgd", eps=1.0)).poison_updates(updates, ctx_for(3, [0, 1]))
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))      # ‖Δ‖ = 5 → 1
    assert torch.equal(out[1], updates[1])                       # inside the ball
    assert torch.equal(out[2], updates[2])                       # honest row untouched
    out = setup_for(make("pgd", eps=1.0, scale=2.0)).poison_updates(updates, ctx_for(3, [0]))
    assert torch.allclose(out[0], torch.tensor([1.2, 1.6]))
    assert float(out[0].norm()) == pytest.approx(2.0)
    # default eps: the median norm of the honest rows (10 and 0.5 → 5.25)
    honest = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.3, 0.4]])
    out = setup_for(make("pgd")).poison_updates(
        torch.cat([torch.tensor([[30.0, 40.0]]), honest]), ctx_for(4, [0]))
    assert float(out[0].norm()) == pytest.approx(5.0)


def test_new_backdoors_learn_a_trigger_end_to_end():
    """Each new backdoor, 10 iid clients (3 malicious), FedAvg, 10 rounds: the model learns
    its trigger, against the same cell with the attack never active (measured on digits:
    dba 51%, blended (α = 0.2) 26%, neurotoxin 92%, pgd 90%; never active ≤ 0.5%)."""
    for name in ("dba", "blended", "neurotoxin", "pgd"):
        asr = {}
        for start in (0, 99):
            cfg = CellConfig(model=ComponentSpec(name="mlp", params={"hidden": [32]}),
                             clients=10, rounds=10, eval_every=10, malicious_fraction=0.3,
                             attack=ComponentSpec(name=name, params={"start_round": start}))
            result = run_cell(cfg)
            asr[start] = result.summary["asr"]
            assert result.summary["accuracy"] > 0.7, name
        assert asr[99] < 0.05 and asr[0] > 0.2, (name, asr)


def test_every_backdoor_shares_the_trigger_base():
    from byzbench.attacks._trigger import TriggerAttack

    for name in ("backdoor", "dba", "blended", "neurotoxin", "pgd"):
        assert issubclass(ATTACKS.get(name), TriggerAttack)
        assert issubclass(ATTACKS.get(name), Attack)


def test_conformance_catches_an_attack_that_ignores_end_round():
    from byzbench.testing import ConformanceError, check_attack

    class Stubborn(Attack):
        """Sign flip that overrides active() and forgets the end of its window."""

        paper = "none (a test fixture)"

        def active(self, round_: int) -> bool:
            p = self.params
            return round_ >= p.start_round and (round_ - p.start_round) % p.every == 0

        def poison_updates(self, updates, ctx):
            return -updates

    with pytest.raises(ConformanceError, match="end_round 5"):
        check_attack(Stubborn)
