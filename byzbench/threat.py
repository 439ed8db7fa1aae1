"""How many clients a fraction means: the one rounding rule of byzbench.

The grid's ``malicious_fraction`` of the federation, the defender's ``assumed_fraction`` of a
round's participants, and the true fraction carried over to a sampled round all become a
count by rounding half up, so 0.25 × 10 = 2.5 makes 3 (never banker's rounding).
"""

from __future__ import annotations

import math

_EPS = 1e-9  # 0.1 × 30 = 3.0000000000000004 in binary must stay 3, and 0.15 × 10 must give 2


def count_of(fraction: float, n: int | float) -> int:
    """⌊fraction · n + ½⌋: the number of clients that ``fraction`` of ``n`` means."""
    return int(math.floor(fraction * n + 0.5 + _EPS))


def assumed_malicious(participants: int, clients: int, malicious: int,
                      assumed_fraction: float | None = None) -> int:
    """f, the malicious count per round the defender assumes: ``assumed_fraction`` of the
    round's participants when the defense sets it, else the true share ``malicious/clients``
    carried over to the round's ``participants``."""
    if assumed_fraction is not None:
        return count_of(assumed_fraction, participants)
    return count_of(malicious / clients, participants)
