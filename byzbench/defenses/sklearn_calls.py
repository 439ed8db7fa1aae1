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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

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


__all__ = ["lean_sklearn"]
