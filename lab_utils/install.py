"""The install cell: requirements.txt's pinned packages, torch kept where it is the tested version."""

# Standard library only: it runs before the packages are there. torch comes first and on its own: PyPI's Linux wheel
# is the CUDA build (about 3 GB with its NVIDIA libraries), which a machine without a GPU never uses; there the CPU
# build (about 200 MB) comes from PyTorch's own index. Sizes measured 2026-12-06 with `pip download` (Linux x86_64,
# Python 3.11; the CUDA figure is torch 2.14.1's, PyPI's newest): the rest of requirements.txt is about 240 MB.

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .errors import LabError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DOWNLOAD_MB = {"torch-cpu": 200, "torch-cuda": 3000, "rest": 240}


def installed(name: str) -> str | None:
    try:
        return metadata.version(name).split("+")[0]  # 2.13.0+cpu is 2.13.0
    except metadata.PackageNotFoundError:
        return None


def extras_installed(name: str, extras: str) -> bool:
    """True when every package that `name`'s extras (e.g. "server") ask for is installed."""
    wanted = {e.strip() for e in extras.split(",") if e.strip()}
    needs = [r for r in metadata.requires(name) or [] if any(re.search(rf"extra == .{e}.", r) for e in wanted)]
    return all(installed(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in needs)


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    if subprocess.run(command).returncode != 0:
        raise LabError(f"pip could not install {' '.join(args)} (its message is above)",
                       "check the internet connection, or install from the README's commands")  # fmt: skip


def install_requirements(path: str | Path = "requirements.txt") -> None:
    """Install what is missing or at another version; say what is kept and how much there is to download."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[([\w,\s]+)\])?==([^\s;#]+)", Path(path).read_text(), re.M)
    pins = {name: version for name, _, version in found}
    # a package with extras (moto[server]) counts as missing while a package its extras need is not installed
    missing = [name for name, extras, pin in found if installed(name) != pin or not extras_installed(name, extras)]
    torch = installed("torch")
    gpu = shutil.which("nvidia-smi") is not None
    if torch == pins["torch"]:
        full = metadata.version("torch")  # with its local label: 2.13.0+cpu
        print(f"torch {full}: the version the lab is tested with, kept"
              + (" (a CPU build: it will not use this machine's GPU)" if gpu and "+cpu" in full else ""))  # fmt: skip
    else:
        build = "torch-cuda" if gpu else "torch-cpu"
        now = f"{torch} is not the tested version" if torch else "is not installed"
        print(f"torch {now}: installing torch {pins['torch']}, the {build[6:].upper()} build "
              f"(about {DOWNLOAD_MB[build]:,} MB to download)")  # fmt: skip
        pip(f"torch=={pins['torch']}", *([] if gpu else ["--index-url", CPU_INDEX]))
    if rest := [name for name in missing if name != "torch"]:
        print(f"installing {', '.join(rest)} (at most about {DOWNLOAD_MB['rest']} MB to download, with what they need)")
        pip("-r", str(path))
    else:
        print(f"the other {len(pins) - 1} pinned packages are installed: nothing to download")
    if missing:
        print("installed; where a package the kernel had already imported was replaced: Kernel > Restart, then go on")
