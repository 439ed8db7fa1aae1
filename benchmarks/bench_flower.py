"""The round overhead of byzbench.flower's RobustStrategy over Flower's own FedAvg.

The same n = 20 train replies (d = 10⁵ float32 parameters in four arrays) are handed, side
by side in one run, to Flower's ``FedAvg.aggregate_train`` and to
``RobustStrategy(spec).aggregate_train`` for a few specs; the table gives the median wall
time per round over a few repetitions (after one warm-up), the adapter's overhead over
FedAvg, and how much of it is the defense itself (the ``byzbench.agg-ms`` metric: the
defense call and applying its aggregate). ``fedavg`` isolates the adapter: parsing and
checking the replies, building the [n, d] matrix, the verdict, the new arrays, the metrics.
The signed spec also times signature verification (signing is done once, untimed).

    python benchmarks/bench_flower.py                       # n=20, d=1e5
    python benchmarks/bench_flower.py --n 50 --d 1000000 --specs fedavg median
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from byzbench import flower as fl


class Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def arrays_of(d: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    sizes = [d // 2, d // 4, d // 8, d - d // 2 - d // 4 - d // 8]
    return {f"layer{i}.weight": rng.normal(size=s).astype(np.float32)
            for i, s in enumerate(sizes)}


def make_replies(strategy, initial: ArrayRecord, nodes, sign=None):
    msgs = list(strategy.configure_train(1, initial, ConfigRecord({}), Grid(nodes)))
    out = []
    for m in msgs:
        sent = {k: v.numpy() for k, v in m.content["arrays"].items()}

        def train(msg, ctx, sent=sent, node=m.metadata.dst_node_id):
            rng = np.random.default_rng(node)      # the same reply whatever the strategy
            local = {k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32)
                     for k, v in sent.items()}
            return Message(RecordDict({
                "arrays": ArrayRecord({k: Array(v) for k, v in local.items()}),
                "metrics": MetricRecord({"num-examples": 100})}), reply_to=msg)

        if sign is None:
            out.append(train(m, None))
        else:
            node = m.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                          run_config={})
            out.append(fl.signing_mod(lambda c, node=node: sign(node))(m, ctx, train))
    return out


def timed(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--d", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--specs", nargs="*",
                   default=["fedavg", "median", "trimmed_mean", "multikrum", "signguard",
                            "ecdsa+multikrum"])
    a = p.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    initial = ArrayRecord({k: Array(v) for k, v in arrays_of(a.d, rng).items()})
    nodes = list(range(1, a.n + 1))
    keydir = tempfile.mkdtemp()
    fl.generate_keys(keydir, [str(n) for n in nodes])
    public = {n: k for n, k in ((int(name), key) for name, key
                                in fl.load_public_keys(keydir).items())}
    private = {n: fl.load_private_key(Path(keydir) / f"{n}.key") for n in nodes}

    fedavg = FedAvg(min_available_nodes=a.n)
    plain = make_replies(fedavg, initial, nodes)
    base = timed(lambda: fedavg.aggregate_train(1, plain), a.repeat)
    print(f"n = {a.n}, d = {a.d}, float32, median of {a.repeat} rounds; torch threads = 1")
    print(f"{'strategy':<34}{'round ms':>10}{'overhead ms':>13}{'defense ms':>12}")
    print(f"{'Flower FedAvg':<34}{base * 1e3:>10.1f}{'—':>13}{'—':>12}")
    for spec in a.specs:
        strategy = fl.RobustStrategy(spec, assumed_fraction=0.2, min_available_nodes=a.n,
                                     public_keys=public)
        signed = strategy.scheme is not None
        replies = make_replies(strategy, initial, nodes,
                               sign=(lambda n: (str(n), private[n])) if signed else None)

        def run(strategy=strategy, replies=replies):
            strategy.history.clear()
            return strategy.aggregate_train(1, replies)

        seconds = timed(run, a.repeat)
        _, metrics = run()
        print(f"{'RobustStrategy ' + spec:<34}{seconds * 1e3:>10.1f}"
              f"{(seconds - base) * 1e3:>13.1f}{metrics['byzbench.agg-ms']:>12.1f}")


if __name__ == "__main__":
    main()
