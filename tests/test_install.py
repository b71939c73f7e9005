"""The install cell: what it keeps, what it installs and from where, and that it says how much it downloads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab_utils import install
from lab_utils.errors import LabError


@pytest.mark.parametrize(
    ("torch", "gpu", "first_call", "said"),
    [
        ("2.13.0+cpu", False, ["-r", "requirements.txt"], "the version the lab is tested with, kept"),
        ("2.5.1", False, ["torch==2.13.0", "--index-url", install.CPU_INDEX], "the CPU build (about 200 MB"),
        (None, True, ["torch==2.13.0"], "the CUDA build (about 3,000 MB"),
    ],
)
def test_torch_is_kept_only_at_the_tested_version(monkeypatch, capsys, torch, gpu, first_call, said):
    calls = []
    versions = {"torch": torch, "peft": "0.1.0"}  # peft at another version: the rest is installed
    monkeypatch.setattr(install, "installed", lambda name: (versions.get(name, "x") or "").split("+")[0] or None)
    monkeypatch.setattr(install.metadata, "version", lambda name: torch)
    monkeypatch.setattr(install.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if gpu else None)
    monkeypatch.setattr(install, "pip", lambda *args: calls.append(list(args)))
    install.install_requirements("requirements.txt")
    out = capsys.readouterr().out
    assert calls[0] == first_call and calls[-1] == ["-r", "requirements.txt"]
    assert said in out and "MB to download" in out.split("\n", 1)[1]


def test_nothing_missing_downloads_nothing(monkeypatch, capsys):
    monkeypatch.setattr(install, "pip", lambda *args: pytest.fail(f"pip {args}"))
    install.install_requirements("requirements.txt")  # this environment is requirements-dev.txt's
    assert "nothing to download" in capsys.readouterr().out


def test_a_failed_pip_is_one_message(monkeypatch):
    monkeypatch.setattr(install.subprocess, "run", lambda command: type("Done", (), {"returncode": 1}))
    with pytest.raises(LabError, match="pip could not install torch==2.13.0"):
        install.pip("torch==2.13.0")


def test_requirements_hold_no_test_tool():
    pins = (Path(__file__).parent.parent / "requirements.txt").read_text().lower()
    assert not any(f"\n{tool}" in pins for tool in ("pytest", "ruff", "nbval", "papermill", "jupyterlab", "selenium"))


def test_a_package_whose_extra_lacks_a_package_is_installed(monkeypatch, capsys):
    pins = dict(re.findall(r"^([\w.-]+)(?:\[\w+\])?==(\S+)", Path("requirements.txt").read_text(), re.M))
    monkeypatch.setattr(install, "installed", lambda name: None if name.lower() == "flask" else pins.get(name, "1"))
    calls = []
    monkeypatch.setattr(install, "pip", lambda *args: calls.append(args))
    install.install_requirements("requirements.txt")  # moto is at its pin, but moto[server]'s flask is missing
    assert calls == [("-r", "requirements.txt")] and "installing moto " in capsys.readouterr().out
