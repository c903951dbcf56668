"""CPU threads for long CPU jobs on machines other programs share: how many, and set up everywhere.

A CPU job that starts more compute threads than the machine can give runs far slower than one
thread per free core: OpenMP threads spin at every barrier waiting for the thread that lost its
core, so one busy core can slow every step 50-fold. Three rules avoid it:

* ask for what the machine can give: the usable cores (the process's CPU affinity and the cgroup
  CPU quota of a container), minus the load other programs already put on them (`os.getloadavg`);
* say it to every library that starts threads: torch (intra- and inter-op pools), OpenMP, MKL,
  OpenBLAS, numexpr, and Hugging Face tokenizers (its Rust pool is turned off: the jobs that
  tokenize here are small);
* let idle threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``),
  so a thread that waits gives its core back to the one that computes.

Child processes inherit the environment that :func:`thread_env` returns; the current process
calls :func:`configure_torch` (before it runs any parallel torch work).

Example:
    >>> from budget_forcing.threads import pick_threads, thread_env
    >>> pick_threads(cores=2, load=0.0)
    2
    >>> pick_threads(cores=2, load=1.3)  # another program keeps one core busy
    1
    >>> thread_env(1)["OMP_NUM_THREADS"], thread_env(1)["OMP_WAIT_POLICY"]
    ('1', 'PASSIVE')
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

__all__ = ["usable_cores", "cgroup_cpu_limit", "other_load", "pick_threads", "thread_env", "configure_torch"]

#: Environment variables that size a library's thread pool.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None: no limit.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "cpu.max").write_text("150000 100000\\n")
    >>> cgroup_cpu_limit(d)
    1.5
    """
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))  # a 1.5-CPU quota still runs 2 threads at 75%
    return max(1, cores)


def _running_tasks(stat: str | Path = "/proc/stat") -> int | None:
    """Runnable tasks right now (``procs_running`` in /proc/stat, this process included)."""
    try:
        for line in Path(stat).read_text().splitlines():
            if line.startswith("procs_running"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def other_load(samples: int = 10, interval: float = 0.05) -> float:
    """How many cores other programs keep busy now.

    The tasks running right now (``procs_running`` of /proc/stat, minus the reading process), averaged
    over ``samples`` readings ``interval`` seconds apart, and at most the 1-minute load average: the
    average still counts work that just ended (a package install before a run), a single reading
    catches bursts. Without /proc, the load average alone.
    """
    import time

    try:
        average = os.getloadavg()[0]
    except OSError:  # not available on this platform
        average = 0.0
    readings = []
    for i in range(samples):
        running = _running_tasks()
        if running is None:
            break
        readings.append(running - 1)
        if i + 1 < samples:
            time.sleep(interval)
    now = sum(readings) / len(readings) if readings else average
    return max(0.0, min(average, now))


def pick_threads(requested: int | None = None, cores: int | None = None, load: float | None = None) -> int:
    """Compute threads to use: ``requested`` if given, else the cores other programs leave free.

    ``cores`` defaults to :func:`usable_cores` and ``load`` to :func:`other_load`. Free cores are
    rounded to the nearest whole core, never fewer than 1 and never more than the cores.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}; leave it unset to pick automatically.")
        return requested
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def thread_env(threads: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ``os.environ``) with every thread pool sized to ``threads`` and spinning off."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    out = dict(os.environ if env is None else env)
    out.update({var: str(threads) for var in THREAD_VARS})
    out.update(
        {
            "OMP_WAIT_POLICY": "PASSIVE",  # waiting OpenMP threads sleep instead of spinning on a core
            "KMP_BLOCKTIME": "0",  # the same for Intel's OpenMP runtime
            "TOKENIZERS_PARALLELISM": "false",  # no Rust thread pool on top of torch's
        }
    )
    return out


def configure_torch(threads: int) -> None:
    """Size torch's thread pools in this process and its environment for child processes.

    torch's inter-op pool can only be sized before its first parallel work; a later call keeps it.
    """
    import torch

    os.environ.update(thread_env(threads))
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already started: keep it
        torch.set_num_interop_threads(1)  # the demo's jobs have no independent ops to overlap
