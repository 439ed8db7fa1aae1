"""What secure aggregation costs: time per round and accuracy (issue 17).

Part 1 — time. One secure sum of a round, SecAgg (complete masking graph) and SecAgg+
(random Harary graph of degree 2⌈log₂ n⌉), at n ∈ {20, 100} clients and d ∈ {10⁴, 10⁵}
coordinates, 62-bit ring: fresh X25519 keys, one key agreement + HKDF per edge, one ChaCha20
keystream per edge, modular adds, the server's unmasking. Repeats are interleaved over the
settings; each figure is the median over repeats. "per client" is the work of one client
(its own edges: total × 2/n, unmasking excluded); "× plain" divides the total by a plaintext
float64 sum of the same [n, d] matrix, timed in the same loop.

Part 2 — accuracy. The digits cell (MLP [64], 20 clients, 30 rounds, no attack) run without
secure aggregation and under SecAgg+ at several ring sizes: final accuracy, and the largest
|aggregate − plaintext aggregate of the same clipped updates| over all rounds (the
quantization error alone; the masking itself is exact). FedAvg and, as the protocol with the
widest dynamic range, geomed (init: mean, RFA's protocol).

Part 3 — protocol deviation. The same cell with 20% malicious clients under SecAgg+:
final accuracy of fedavg, geomed and centered_clipping when the malicious clients flip
their update and follow the protocol (``sign_flip``), or flip it and inflate every
quantity they submit ten-fold (``secagg_inflate``).

    python benchmarks/bench_privacy.py [--repeats 3] [--rounds 30] [--quick]

Prints three markdown tables. The default run takes about 2–3 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from byzbench.config import CellConfig, SecAggConfig, secagg_fraction_bits
from byzbench.defenses.base import Verdict
from byzbench.engine.simulation import Simulation
from byzbench.privacy.secagg import SecureChannel, plus_degree

SIZES = [(20, 10_000), (20, 100_000), (100, 10_000), (100, 100_000)]
PROTOCOLS = ["secagg", "secagg+"]
PARTS = ["key_agreement", "hkdf", "keystream", "adds", "unmask"]


def time_round(protocol: str, n: int, d: int, x: torch.Tensor) -> dict[str, float]:
    """Seconds of one round with one secure sum, by part; plus a plaintext sum's."""
    channel = SecureChannel(x, SecAggConfig(), protocol, range(n), 0,
                            np.random.default_rng(0))
    channel.secure_sum(lambda u: u, bound=1.0)
    out = {part: getattr(channel.timings, part) for part in PARTS}
    out["total"] = channel.timings.total
    out["edges"] = int(channel.adjacency.sum()) // 2
    arr = x.numpy()
    t0 = time.perf_counter()
    arr.sum(axis=0)
    out["plain"] = time.perf_counter() - t0
    return out


def cost_table(repeats: int, sizes: list[tuple[int, int]]) -> str:
    gen = torch.Generator().manual_seed(0)
    inputs = {(n, d): (torch.rand(n, d, generator=gen, dtype=torch.float64) * 2 - 1)
              for n, d in sizes}
    runs: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    for _ in range(repeats):  # interleaved: every setting once per repeat
        for protocol in PROTOCOLS:
            for n, d in sizes:
                runs.setdefault((protocol, n, d), []).append(
                    time_round(protocol, n, d, inputs[(n, d)]))
    lines = ["| protocol | n | d | degree | edges | total ms | key agreement | HKDF | "
             "keystream | modular adds | unmask | per client ms | × plain sum |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (protocol, n, d), rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        degree = n - 1 if protocol == "secagg" else plus_degree(n)
        client = (med["total"] - med["unmask"]) * 2 / n
        lines.append(
            f"| {protocol} | {n} | {d:,} | {degree} | {int(med['edges'])} | "
            f"{med['total'] * 1e3:.0f} | "
            + " | ".join(f"{med[p] * 1e3:.1f}" for p in PARTS)
            + f" | {client * 1e3:.1f} | {med['total'] / med['plain']:.0f} |")
    return "\n".join(lines)


class _Probe(Simulation):
    """The cell as it runs, plus, per round, the plaintext aggregate of the same clipped
    updates (the defense's preview: no side effects) for the quantization error."""

    max_error = 0.0

    def _secure_verdict(self, updates, rctx, clients, actx):  # type: ignore[override]
        verdict, secagg_s, sign_s = super()._secure_verdict(updates, rctx, clients, actx)
        r = self.config.privacy.secagg.range
        ctx = replace(rctx, weights=None)
        plain: Verdict = self.defense.preview(updates.clamp(-r, r).double(), ctx)
        err = (verdict.aggregate.double() - plain.aggregate).abs().max().item()
        self.max_error = max(self.max_error, err)
        return verdict, secagg_s, sign_s


def accuracy_table(rounds: int, bits_list: list[int]) -> str:
    base = {"dataset": {"name": "digits"},
            "model": {"name": "mlp", "params": {"hidden": [64]}}, "clients": 20,
            "rounds": rounds, "local": {"steps": 5, "batch_size": 32, "lr": 0.1},
            "eval_every": rounds, "device": "cpu", "seed": 0}
    defenses = {"fedavg": {"name": "fedavg"},
                "geomed": {"name": "geomed", "params": {"init": "mean"}}}
    lines = ["| defense | secure aggregation | bits | fraction bits | final accuracy | "
             "max \\|aggregate error\\| | secagg ms/round |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, spec in defenses.items():
        plain = Simulation(CellConfig(**base, defense=spec))
        acc = plain.run()[-1]["accuracy"]
        lines.append(f"| {label} | none | – | – | {acc:.4f} | – | – |")
        for bits in bits_list:
            cfg = CellConfig(**base, defense=spec, privacy={
                "secure_aggregation": "secagg+", "secagg": {"bits": bits}})
            sim = _Probe(cfg)
            rows = sim.run()
            frac = secagg_fraction_bits(20, 1.0, bits)
            ms = statistics.median(r["secagg_ms"] for r in rows)
            lines.append(f"| {label} | secagg+ | {bits} | {frac} | {rows[-1]['accuracy']:.4f}"
                         f" | {sim.max_error:.2e} | {ms:.0f} |")
    return "\n".join(lines)


def deviation_table(rounds: int) -> str:
    """Final accuracy under SecAgg+ when the malicious clients flip their update and follow
    the protocol (sign_flip), or also inflate what they submit (secagg_inflate)."""
    base = {"dataset": {"name": "digits"},
            "model": {"name": "mlp", "params": {"hidden": [64]}}, "clients": 20,
            "rounds": rounds, "local": {"steps": 5, "batch_size": 32, "lr": 0.1},
            "eval_every": rounds, "device": "cpu", "seed": 0, "malicious_fraction": 0.2}
    attacks = {"none": {"name": "none"}, "sign_flip": {"name": "sign_flip"},
               "secagg_inflate ×10": {"name": "secagg_inflate", "params": {"inflate": 10.0}}}
    lines = ["| defense | " + " | ".join(attacks) + " |",
             "|---|" + "---:|" * len(attacks)]
    for defense in ["fedavg", "geomed", "centered_clipping"]:
        accs = []
        for spec in attacks.values():
            cfg = CellConfig(**base, defense={"name": defense}, attack=spec,
                             privacy={"secure_aggregation": "secagg+"})
            accs.append(Simulation(cfg).run()[-1]["accuracy"])
        lines.append(f"| {defense} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 62])
    ap.add_argument("--quick", action="store_true",
                    help="n = 20 only, one repeat, 5 rounds (a smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sizes = SIZES
    if args.quick:
        sizes, args.repeats, args.rounds = [s for s in SIZES if s[0] == 20], 1, 5
    start = time.perf_counter()
    print("### Secure aggregation: time per round (one secure sum), median of "
          f"{args.repeats} interleaved repeats\n")
    print(cost_table(args.repeats, sizes))
    print("\n### Quantization alone: digits, 20 clients, "
          f"{args.rounds} rounds, no attack, seed 0\n")
    print(accuracy_table(args.rounds, args.bits))
    print(f"\n### Protocol deviation: SecAgg+, 20% malicious, {args.rounds} rounds, seed 0\n")
    print(deviation_table(args.rounds))
    print(f"\n(wall time {time.perf_counter() - start:.0f} s; torch threads 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
