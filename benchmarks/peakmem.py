"""Peak-memory measurement in a fresh subprocess per measurement.

Why a subprocess: `tracemalloc` does not see torch's allocations and a process's peak RSS never
goes down, so one process measuring several configurations would report the largest of them for
all. Each measurement therefore runs in its own child process, which resets its peak after setup
(`/proc/self/clear_refs` = 5, so model construction and imports do not count) and reports
its peak RSS (VmHWM, i.e. `ru_maxrss` without the thread-exit records) after the measured call.
On CUDA it reports `torch.cuda.max_memory_allocated` instead.

The parent watches the child's RSS and kills it above a cap, because the machine these
benchmarks run on is shared with long jobs that an out-of-memory kill would take down too.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULT_PREFIX = "RESULT "


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Make the peak RSS (and CUDA peak) start from now; False where the kernel refuses.

    Freed heap is handed back first (`malloc_trim`), so the baseline is live memory rather than
    whatever the allocator kept from setup and warm-up.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak RSS in MiB since the last successful `reset_peak`.

    VmHWM is the address space's high-water mark, which clear_refs resets. `ru_maxrss` is the same
    figure except that it also keeps the high-water mark recorded when any thread exited, so a
    weight-loading thread pool that winds down after the reset brings the setup peak back; it is
    only the fallback where /proc is unavailable (both are KiB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak_mb() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def emit(result: dict) -> None:
    """Child side: print the one line the parent parses."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def add_child_arguments(ap) -> None:
    """The flags every memory-measuring benchmark shares: the RSS cap and the hidden child entry point."""
    import argparse

    ap.add_argument(
        "--max-rss-mb",
        type=float,
        default=None,
        help="kill a measurement whose RSS passes this (default: 80%% of MemAvailable at start)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)


def serve_child(args, child) -> bool:
    """If this process was started as a measurement child, run `child(payload)` and return True."""
    if not args.child:
        return False
    child(json.loads(args.child))
    return True


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _child_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_child(script: str, payload: dict, *, max_rss_mb: float, timeout_s: float = 3600) -> dict:
    """Run `python script --child JSON` and return its RESULT dict.

    On failure returns {"error": why}: killed above `max_rss_mb`, timed out, or crashed.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(payload.get("threads", 1)))
    env.setdefault("MKL_NUM_THREADS", str(payload.get("threads", 1)))
    proc = subprocess.Popen(
        [sys.executable, script, "--child", json.dumps(payload)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    start = time.monotonic()
    seen = 0.0
    killed = ""
    while proc.poll() is None:
        seen = max(seen, _child_rss_mb(proc.pid))
        if seen > max_rss_mb:
            killed = f"killed: RSS {seen:.0f} MiB passed the --max-rss-mb cap {max_rss_mb:.0f}"
        elif time.monotonic() - start > timeout_s:
            killed = f"killed: ran past {timeout_s:.0f} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    if killed:
        return {"error": killed}
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (err or out).strip().splitlines()[-3:]
    return {"error": f"child exited {proc.returncode}: " + " | ".join(tail)}
