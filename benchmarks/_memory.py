"""Memory readings shared by the benchmarks (Linux): current and peak RSS of this process."""

from __future__ import annotations

import resource


def rss_mib() -> float:
    """Resident set size now, MiB (``VmRSS`` of /proc/self/status; NaN where absent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
