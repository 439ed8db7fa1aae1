"""The ServerApp: a byzbench defense as the Flower strategy."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from byzbench.flower import RobustStrategy, enroll_nodes, load_public_keys
from examples.flower.task import evaluate, load_partition, make_model


def make_server_app(defense: Any = "ecdsa+multikrum", rounds: int = 5,
                    key_dir: str | None = None, assumed_fraction: float = 0.2,
                    out: dict[str, Any] | None = None) -> ServerApp:
    """``key_dir`` holds the clients' registered public keys ``client-<i>.pub``; ``out``
    receives the strategy and Flower's Result (for tests)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        keys = None
        if key_dir is not None:       # bind node ids to the registered keys
            keys = enroll_nodes(grid, load_public_keys(key_dir))
        strategy = RobustStrategy(defense, assumed_fraction=assumed_fraction,
                                  public_keys=keys, keep_updates=out is not None,
                                  fraction_evaluate=0.0,
                                  min_available_nodes=len(keys) if keys else 2)
        _, _, xt, yt = load_partition(0, 1)

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = make_model()
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(model, xt, yt)
            return MetricRecord({"loss": loss, "accuracy": acc})

        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()),
                                num_rounds=rounds, train_config=ConfigRecord({}),
                                evaluate_fn=central)
        names = getattr(keys, "names", {})
        for report in strategy.history:
            flagged = [f"{n} ({names[n]})" if n in names else str(n)
                       for n in report.flagged_nodes]
            print(f"round {report.server_round}: flagged nodes [{', '.join(flagged)}], "
                  f"rejected {report.rejected}")
        if out is not None:
            out.update(strategy=strategy, result=result,
                       names=getattr(keys, "names", None))

    return app
