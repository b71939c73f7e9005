"""One exception type for problems a learner or instructor can fix, with the fix in the message."""

from __future__ import annotations


class LabError(RuntimeError):
    """A problem with configuration or input: the message says what is wrong and what to do."""

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what}\n  -> {fix}")


def install_notebook_handler() -> None:
    """In IPython, show a `LabError` as its message alone instead of a deep traceback."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is in requirements
        return
    ip = get_ipython()
    if ip is None:
        return

    def _show(shell, etype, value, tb, tb_offset=None):
        print(f"LabError: {value}")
        return None

    ip.set_custom_exc((LabError,), _show)
