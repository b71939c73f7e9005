"""Measuring in a fresh process, where nothing else in this process can inflate memory or time."""

# What a notebook's other models or an earlier measurement's caches hold stays out of the figures. The serving table and
# the benchmark measure through `run_isolated`.

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import resource
import sys
import traceback
from collections.abc import Callable

from .errors import LabError


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
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
    try:
        import torch

        from .errors import quiet_library_notes

        quiet_library_notes()  # as in the notebook: the child's stderr is the kernel's
        if threads:
            torch.set_num_threads(threads)
        # random weights make the backward pass produce denormal floats, which x86 CPUs compute in slow microcode
        # (measured: a course-padded step 104 s instead of 19 s); flushing them measures the arithmetic instead
        torch.set_flush_denormal(flush_denormals)
        result = dict(fn(**kwargs))
        conn.send(("ok", {"peak_rss_mb": peak_rss_mb(), **result}))  # the peak after the work
    except BaseException as exc:  # everything goes back to the parent, which reports it
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., dict], threads: int | None = None, flush_denormals: bool = False, **kwargs) -> dict:
    """`fn(**kwargs)` (a module-level function) in a fresh spawned process: its dict result with `peak_rss_mb`."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, kwargs, threads, flush_denormals), daemon=True)
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()  # EOFError when the process died without a word (killed for memory)
    except EOFError:
        status, payload = "died", None
    proc.join()
    name = getattr(fn, "__name__", str(fn))
    if status == "died":
        why = " (killed: probably out of memory)" if proc.exitcode in (-9, 137) else ""
        raise LabError(f"the measuring process for {name} died with exit code {proc.exitcode}{why}",
                       "measure less at once (fewer parts or smaller sizes), or free memory")  # fmt: skip
    if status != "ok":
        raise LabError(f"measurement {name} failed in its process: {payload}", "fix the error the traceback shows")
    return payload


def memory_report() -> str:
    """One line: this process's resident memory now and its peak so far (what the notebook shows per section)."""
    with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed blocks for reuse: hand them back, so that
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)  # letting a trainer go shows
    return f"memory of this process: {rss_mb() / 1024:.1f} GB resident, {peak_rss_mb() / 1024:.1f} GB at most so far"
