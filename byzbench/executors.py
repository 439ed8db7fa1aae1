"""Start-up of the local executor's worker processes, kept light to import.

Workers fork from a *forkserver*: a clean process that has imported the engine once (torch,
the attacks and defenses with their scipy/scikit-learn imports — about 2.5 s) and never ran
torch, so no OpenMP or CUDA state is inherited; each worker is then a cheap fork of it.
:func:`prestart_pool` launches that server at once, so its imports run on another core while
the calling process does its own (the CLI calls it before it even reads the grid); a pool
created later finds the server ready. This module imports nothing heavy itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context

# what each worker needs before its first cell: the engine and every built-in component, and
# numpy.ma, which numpy imports lazily on the first np.unique (~11 ms inside the first cell)
PRELOAD = ["numpy.ma", "byzbench.engine.simulation", "byzbench.data.datasets", "byzbench.data.partition",
           "byzbench.models", "byzbench.attacks", "byzbench.defenses", "byzbench.runner",
           "byzbench._forkserver_ready"]


def pool_context() -> multiprocessing.context.BaseContext:
    """forkserver (with :data:`PRELOAD`) where the platform has it, else spawn."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def prestart_pool() -> bool:
    """Launch the forkserver now, without waiting for its imports; False if there is none."""
    ctx = pool_context()
    if ctx.get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True


__all__ = ["PRELOAD", "pool_context", "prestart_pool"]
