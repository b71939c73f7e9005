"""One exception type for problems a learner or instructor can fix, with the fix in the message."""

from __future__ import annotations

import errno


class LabError(RuntimeError):
    """A problem with configuration or input: the message says what is wrong and what to do."""

    def __init__(self, what: str, fix: str | None = None):
        self.what, self.fix = what, fix
        super().__init__(what if not fix else f"{what}\n  -> {fix}")


# a disk that refuses what the lab writes: one message naming the file and the fix, not a traceback
WRITABLE = "make that folder writable for you"
DISK_ERRORS = {errno.ENOSPC: "free some space on that disk (old runs under data/ can go)", errno.EACCES: WRITABLE,
               errno.EDQUOT: "free some space: the disk quota is used up", errno.EROFS: "that disk is read-only",
               errno.EPERM: WRITABLE}  # fmt: skip


def disk_error(exc: BaseException, where: object, also: str = "") -> LabError | None:
    """The `LabError` for an `OSError` from a disk that refuses a write (full, read-only, no permission), else None."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRORS:
        return None
    return LabError(f"cannot write {where}: {exc.strerror}", DISK_ERRORS[exc.errno] + (f", {also}" if also else ""))


def quiet_library_notes() -> None:
    """Silence two library notes a learner cannot act on (JupyterLab shows them as pink boxes with a file path)."""
    import logging
    import warnings

    # The course's adapter was saved by peft 0.3, whose LoraConfig had `enable_lora` and `merge_weights`: peft 0.21
    # ignores them (as it should) and warns at every load that the adapter may come from a newer peft.
    warnings.filterwarnings("ignore", message=r"Unexpected keyword arguments \['enable_lora', 'merge_weights'\]")
    # With gradient checkpointing (the course profile) T5 says once that it turns off generation's key/value cache
    # during training: it always does, and training never uses that cache.
    logging.getLogger("transformers.models.t5.modeling_t5").addFilter(lambda r: "use_cache=True" not in r.getMessage())


def install_notebook_handler() -> None:
    """In IPython, show a `LabError` as its message alone instead of a deep traceback; library notes quieted."""
    from IPython import get_ipython

    quiet_library_notes()
    if (ipython := get_ipython()) is not None:
        ipython.set_custom_exc((LabError,), lambda shell, etype, value, tb, tb_offset=None: print(f"LabError: {value}"))
