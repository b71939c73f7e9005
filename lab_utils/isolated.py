"""Measuring in a fresh process: memory and time that nothing else in this process (a notebook's other models, an
earlier measurement's caches) can inflate. The serving table and every benchmark part measure through `run_isolated`.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable

from .errors import LabError


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux's /proc; the peak where that is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return peak_rss_mb()


def _child(conn, fn: Callable[..., dict], kwargs: dict, threads: int | None, flush_denormals: bool) -> None:
    """A measuring process: run `fn(**kwargs)` and send back its result (a dict) with the process's peak memory."""
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        if flush_denormals:
            # random weights make the backward pass produce denormal floats, which x86 CPUs compute in slow microcode
            # (measured: a course-padded step 104 s instead of 19 s); flushing them measures the arithmetic instead
            torch.set_flush_denormal(True)
        # both sides of every comparison truncate at the same length: the warning would only repeat that
        warnings.filterwarnings("ignore", message=".*prompts exceed .* tokens and were truncated")
        result = dict(fn(**kwargs))
        result.setdefault("peak_rss_mb", peak_rss_mb())
        conn.send(("ok", result))
    except BaseException as exc:  # everything goes back to the parent, which reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., dict], threads: int | None = None, flush_denormals: bool = False, **kwargs) -> dict:
    """`fn(**kwargs)` run in a fresh process (spawned: nothing inherited), its dict result with `peak_rss_mb`.

    `fn` must be a module-level function (the new process imports it by name); a process that dies (e.g. killed
    for memory) or raises is reported as one `LabError`.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, kwargs, threads, flush_denormals), daemon=True)
    proc.start()
    child.close()
    message = None
    while message is None:
        if parent.poll(0.5):
            try:
                message = parent.recv()
            except EOFError:
                break
        elif not proc.is_alive():
            if parent.poll(0.5):
                continue
            break
    proc.join()
    name = getattr(fn, "__name__", str(fn))
    if message is None:
        why = " (killed: probably out of memory)" if proc.exitcode in (-9, 137) else ""
        raise LabError(
            f"the measuring process for {name} died with exit code {proc.exitcode}{why}",
            "measure less at once (fewer parts or smaller sizes), or free memory",
        )
    status, payload = message
    if status != "ok":
        raise LabError(f"measurement {name} failed in its process: {payload}", "fix the error the traceback shows")
    return payload


def release_free_memory() -> None:
    """Hand memory that Python freed back to the system (glibc keeps freed blocks for reuse, so a process's resident
    memory would not show that a trainer was let go). Nothing happens where glibc is not the C library."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_report() -> str:
    """One line: this process's resident memory now and its peak so far (what the notebook shows per section)."""
    release_free_memory()
    return f"memory of this process: {rss_mb() / 1024:.1f} GB resident, {peak_rss_mb() / 1024:.1f} GB at most so far"
