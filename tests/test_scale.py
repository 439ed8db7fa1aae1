"""Large federations and devices: client_chunk, host-drawn plans, the device setting."""

from __future__ import annotations

import pytest
import torch

from byzbench.config import CellConfig, ComponentSpec, grid_from_dict
from byzbench.engine.simulation import Simulation, run_cell
from byzbench.engine.training import plan_batches, train_chunked, train_vectorized
from byzbench.models import BatchedMLP
from byzbench.registry import ATTACKS, DEFENSES
from byzbench.seeding import torch_generator

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def synthetic_cell(**kw) -> CellConfig:
    base = dict(dataset=ComponentSpec(name="synthetic", params={"train_samples": 600,
                                                                "test_samples": 200}),
                model=ComponentSpec(name="mlp", params={"hidden": [16]}), clients=12,
                rounds=3, local={"steps": 3, "batch_size": 8, "lr": 0.1}, eval_every=1,
                device="cpu")
    base.update(kw)
    return CellConfig(**base)


@pytest.mark.parametrize("mode", [{"steps": 3, "epochs": None}, {"steps": None, "epochs": 2}])
def test_chunked_training_equals_one_batch(mode):
    """One plan drawn for all clients, trained in slices of 3: the same updates."""
    gen = torch.Generator().manual_seed(0)
    model = BatchedMLP(20, [16], 5)
    x, y = torch.randn(300, 20, generator=gen), torch.randint(0, 5, (300,), generator=gen)
    sizes = [3, 40, 17, 25, 8, 30, 50, 12]  # uneven, some below a batch: step masks differ
    perm = torch.randperm(300, generator=gen)
    index = torch.zeros(len(sizes), max(sizes), dtype=torch.long)
    start = 0
    for i, n in enumerate(sizes):
        index[i, :n] = perm[start:start + n]
        start += n
    plan = plan_batches(index, torch.tensor(sizes), 16, generator=gen, **mode)
    theta = model.init(gen)
    whole = train_vectorized(model, theta, x, y, plan, 0.1, 0.9, 1e-3)
    for chunk in (1, 3, 5, 8, 100):
        parts = train_chunked(model, theta, x, y, plan, 0.1, 0.9, 1e-3, chunk=chunk)
        assert parts.shape == whole.shape
        assert torch.allclose(parts, whole, atol=1e-6), (chunk, (parts - whole).abs().max())


def test_client_chunk_gives_the_same_updates_with_client_sampling():
    config = synthetic_cell(clients=20, clients_per_round=7, malicious_fraction=0.2,
                            attack=ComponentSpec(name="sign_flip"))
    plain = Simulation(config)
    chunked = Simulation(config.model_copy(update={"client_chunk": 3}))
    assert chunked.chunk == 3
    for r in range(3):
        clients = plain._participants(r)
        assert (clients == chunked._participants(r)).all() and len(clients) == 7
        ids = torch.from_numpy(clients)
        a = plain._train(plain.data.index[ids], plain.data.counts[ids], plain.data.x,
                         plain.data.y, r)
        b = chunked._train(chunked.data.index[ids], chunked.data.counts[ids],
                           chunked.data.x, chunked.data.y, r)
        assert a.shape == (7, plain.model.dim)
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
        plain.run_round(r)
        chunked.run_round(r)
        assert torch.allclose(plain.theta, chunked.theta, atol=1e-6)


def test_client_chunk_and_device_are_not_part_of_the_cell_id():
    raw = {"name": "g", "base": {"clients": 10}, "grid": {"seed": [0]}}
    a = grid_from_dict(raw).cells[0]
    b = grid_from_dict({**raw, "base": {"clients": 10, "client_chunk": 4,
                                        "device": "cpu"}}).cells[0]
    assert a.id == b.id
    assert a.config.device == "auto" and a.config.client_chunk is None
    with pytest.raises(Exception, match="client_chunk"):
        CellConfig(client_chunk=0)


def test_a_cell_with_chunks_matches_the_cell_without():
    one = run_cell(synthetic_cell(clients=15, clients_per_round=9))
    chunked = run_cell(synthetic_cell(clients=15, clients_per_round=9, client_chunk=4))
    assert one.status == chunked.status == "done"
    assert [r["n"] for r in chunked.rounds] == [9, 9, 9]
    for a, b in zip(one.rounds, chunked.rounds):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert one.summary["device"] == "cpu"


def test_a_thousand_clients_train_in_chunks():
    config = synthetic_cell(
        dataset=ComponentSpec(name="synthetic", params={"train_samples": 20_000,
                                                        "test_samples": 500}),
        clients=1000, rounds=3, client_chunk=256, local={"steps": 2, "batch_size": 10,
                                                         "lr": 0.5})
    result = run_cell(config)
    assert result.status == "done" and [r["n"] for r in result.rounds] == [1000] * 3
    assert result.rounds[-1]["accuracy"] > result.rounds[0]["accuracy"]  # it learns


def test_batch_plans_are_drawn_on_the_host():
    """The plan comes from a CPU generator whatever the device, so devices see one plan."""
    sim = Simulation(synthetic_cell())
    ids = torch.arange(12)
    plan = plan_batches(sim.data.index[ids], sim.data.counts[ids], 8, 3, None,
                        torch_generator(sim.seed, "batches", 0))
    assert plan.rows.device.type == "cpu"
    moved = plan.to("cpu")
    assert moved.full_steps == (True, True, True)


@CUDA
def test_cuda_cell_matches_cpu_cell():
    cpu = run_cell(synthetic_cell(device="cpu"))
    gpu = run_cell(synthetic_cell(device="cuda"))
    assert gpu.summary["device"] == "cuda"
    for a, b in zip(cpu.rounds, gpu.rounds):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=0.02)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


@CUDA
def test_cuda_training_does_not_wait_on_the_device():
    """Training a round from a host-drawn plan issues no synchronizing operation."""
    sim = Simulation(synthetic_cell(device="cuda", client_chunk=5))
    ids = torch.arange(12)
    plan = plan_batches(sim.data.index[ids], sim.data.counts[ids], 8, 3, None,
                        torch_generator(sim.seed, "batches", 0))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        updates = train_chunked(sim.model, sim.theta, sim.data.x, sim.data.y, plan, 0.1,
                                chunk=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert updates.device.type == "cuda" and updates.shape == (12, sim.model.dim)


def _cpu_and_cuda(**kw) -> tuple:
    """One small attacked cell run on the CPU and on the GPU, with the same seed."""
    config = synthetic_cell(clients=15, rounds=2, malicious_fraction=0.2, **kw)
    return run_cell(config), run_cell(config.model_copy(update={"device": "cuda"}))


def _same_rounds(cpu, gpu) -> None:
    assert cpu.status == gpu.status == "done", (cpu.error, gpu.error)
    assert gpu.summary["device"] == "cuda"
    for a, b in zip(cpu.rounds, gpu.rounds):
        # who was flagged is a discrete decision: the devices must agree on it exactly
        assert [a[k] for k in ("tp", "fp", "fn", "tn")] == [b[k] for k in ("tp", "fp", "fn", "tn")]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


@CUDA
@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_runs_on_cuda_as_on_cpu(name):
    """Each defense, on updates living on the GPU, flags the same clients and gives the same
    model as on the CPU (scikit-learn clustering and ECDSA included: their host round trip)."""
    params = {"layers": ["norm_clip", "median"]} if name == "pipeline" else {}
    _same_rounds(*_cpu_and_cuda(attack=ComponentSpec(name="sign_flip"),
                                defense=ComponentSpec(name=name, params=params)))


@CUDA
@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if ATTACKS.get(n).aware])
@pytest.mark.parametrize("defense", ["trimmed_mean", "multikrum"])
def test_defense_aware_attacks_run_on_cuda_as_on_cpu(name, defense):
    """The attacks that query the defense (its oracle on GPU rows) search the same way."""
    _same_rounds(*_cpu_and_cuda(attack=ComponentSpec(name=name),
                                defense=ComponentSpec(name=defense)))
