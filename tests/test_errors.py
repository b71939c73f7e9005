"""In the notebook, a configuration mistake shows as one clear message, not a deep traceback, and still stops
"Run All" (the cell fails)."""

from __future__ import annotations


def test_lab_error_in_ipython_is_one_message(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from lab_utils.errors import install_notebook_handler

    shell = InteractiveShell.instance()
    try:
        install_notebook_handler()
        result = shell.run_cell("from lab_utils.config import load_settings\nload_settings('cloud')")
    finally:
        InteractiveShell.clear_instance()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "LabError: unknown profile `LAB_PROFILE`='cloud'" in text
    assert "-> set `LAB_PROFILE` to one of course, offline" in text
    assert "Traceback" not in text and "site-packages" not in text
    assert not result.success  # the cell still fails, so Run All stops there
