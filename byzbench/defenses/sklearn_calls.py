"""How the clustering defenses call scikit-learn: the same estimators, with less overhead.

Our defenses cluster a few dozen points per round, where scikit-learn's own bookkeeping
costs more than the clustering. :func:`lean_sklearn` wraps one call:

- ``sklearn.config_context(skip_parameter_validation=True)``: every parameter of the
  estimator comes from the defense's pydantic ``Params``, already validated, so scikit-learn's
  own validation of them would only repeat itself. The arrays are still checked (finite
  values: an attacker's row can be finite and still overflow a distance), and the estimator
  runs the same algorithm on the same arrays, so labels are unchanged (the tests compare
  them with and without the context).
- scikit-learn's OpenMP team held to one thread while torch has several: the team then
  competes with torch's spin-waiting threads, which made a clustering call 4–13× slower on
  a loaded machine (``benchmarks/bench_defenses.py --clustering``). With one torch thread
  there is no such contention and resizing the team each call would only cost.

What the vectorised reimplementations (:mod:`~byzbench.defenses.kmeans`,
:mod:`~byzbench.defenses.mean_shift`) share with scikit-learn lives here too: its input check
(:func:`finite_matrix`) and the BLAS its Cython calls (:func:`scipy_blas`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch

_CONTROLLER: Any = None


@contextmanager
def lean_sklearn() -> Iterator[None]:
    """Context for one scikit-learn clustering call of a defense (see the module doc)."""
    import sklearn  # the defenses import scikit-learn lazily (~0.5 s)

    global _CONTROLLER
    with ExitStack() as stack:
        stack.enter_context(sklearn.config_context(skip_parameter_validation=True))
        if torch.get_num_threads() > 1:
            if _CONTROLLER is None:
                from threadpoolctl import ThreadpoolController
                _CONTROLLER = ThreadpoolController()  # once scikit-learn has loaded OpenMP
            stack.enter_context(_CONTROLLER.limit(limits=1, user_api="openmp"))
        yield


def finite_matrix(X: Any, *, copy: bool = False) -> np.ndarray:
    """``X`` as a C-ordered float64 ``[m, d]`` array (a copy of it with ``copy``); a
    ``ValueError`` for an empty, non-2-D or non-finite one, as scikit-learn's input check."""
    x = (np.array(X, dtype=np.float64, order="C", copy=True) if copy
         else np.ascontiguousarray(X, dtype=np.float64))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"X must be a non-empty [m, d] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("X contains NaN or infinity")
    return x


def scipy_blas() -> Any:
    """scipy's BLAS wrappers: the library scikit-learn's Cython calls
    (``scipy.linalg.cython_blas``), imported lazily."""
    from scipy.linalg import blas
    return blas


__all__ = ["finite_matrix", "lean_sklearn", "scipy_blas"]
