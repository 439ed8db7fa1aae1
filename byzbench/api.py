"""The Python API, for notebooks and scripts: the functions the CLI calls, without its output.

    import byzbench.api as bb
    grid = bb.load_grid("configs/quick.yaml")        # validate; grid.cells are the cells
    summary = bb.run(grid, workers=2)                 # same executor and resume as the CLI
    res = bb.load_results("results/quick")
    res.cells    # pandas DataFrame, one row per cell (axes, status, summary metrics)
    res.rounds   # pandas DataFrame, one row per cell and round
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from byzbench.config import Cell, CellConfig, ConfigError, Grid, grid_from_dict, load_grid
from byzbench.engine.simulation import CellResult
from byzbench.engine.simulation import run_cell as _run_cell
from byzbench.executors import import_lazy
from byzbench.ray_executor import RayOptions
from byzbench.runner import DEFAULT_THREADS, RunSummary, run_grid
from byzbench.store import ResultsStore, StoreError


@dataclass(frozen=True)
class Results:
    """A results directory read into DataFrames."""

    directory: Path
    cells: pd.DataFrame
    rounds: pd.DataFrame


def run(grid: Grid | str | Path, results_dir: str | Path | None = None,
        workers: int | None = None, threads: int | None = None, force: bool = False,
        strict: bool = False, executor: str = "local", ray_options: RayOptions | None = None) -> RunSummary:
    """Run a grid (a :class:`Grid` or the path of its YAML file); see :func:`run_grid`.

    ``executor="ray"`` runs each cell as a Ray task (``ray_options``: address, CPUs and
    GPUs per cell), with the same database, resume and determinism.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    return run_grid(grid, results_dir, workers=workers, threads=threads, force=force,
                    strict=strict, executor=executor, ray_options=ray_options)


def run_cell(config: CellConfig, device: torch.device | str | None = None,
             threads: int = DEFAULT_THREADS) -> CellResult:
    """Simulate one cell (:func:`byzbench.engine.simulation.run_cell`) on ``threads`` torch
    threads — one by default, as in a grid — and restore the caller's thread count after.
    What the cell's components import on first use is imported first, outside its
    ``wall_s`` (:func:`byzbench.executors.import_lazy`), as in a grid."""
    if threads < 1:
        raise ConfigError(f"threads must be ≥ 1, got {threads}")
    import_lazy(config)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_cell(config, torch.device(device) if device is not None else None)
    finally:
        torch.set_num_threads(previous)


def load_results(results_dir: str | Path) -> Results:
    """Read a results directory's database as DataFrames (raises StoreError if absent)."""
    with ResultsStore.open(results_dir) as store:
        return Results(Path(results_dir), store.cells_frame(), store.rounds_frame())


__all__ = ["Cell", "CellConfig", "CellResult", "ConfigError", "Grid", "RayOptions", "Results",
           "RunSummary",
           "StoreError", "grid_from_dict", "load_grid", "load_results", "run", "run_cell"]
