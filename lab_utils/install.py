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


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    if subprocess.run(command).returncode != 0:
        raise LabError(f"pip could not install {' '.join(args)} (its message is above)",
                       "check the internet connection, or install from the README's commands")  # fmt: skip


def install_requirements(path: str | Path = "requirements.txt") -> None:
    """Install what is missing or at another version; say what is kept and how much there is to download."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)(?:\[\w+\])?==([^\s;#]+)", Path(path).read_text(), re.M))
    missing = [name for name, version in pins.items() if installed(name) != version]
    torch = installed("torch")
    if torch == pins["torch"]:
        print(f"torch {metadata.version('torch')}: the version the lab is tested with, kept")
    else:
        gpu = shutil.which("nvidia-smi") is not None
        build = "torch-cuda" if gpu else "torch-cpu"
        now = f"{torch} is not the tested version" if torch else "is not installed"
        print(f"torch {now}: installing torch {pins['torch']}, the {build[6:].upper()} build "
              f"(about {DOWNLOAD_MB[build]:,} MB to download)")  # fmt: skip
        pip(f"torch=={pins['torch']}", *([] if gpu else ["--index-url", CPU_INDEX]))
    rest = [name for name in missing if name != "torch"]
    if not rest:
        print(f"the other {len(pins) - 1} pinned packages are installed: nothing to download")
        return
    print(f"installing {', '.join(rest)} (at most about {DOWNLOAD_MB['rest']} MB to download, with what they need)")
    pip("-r", str(path))
    print("installed; where a package the kernel had already imported was replaced: Kernel > Restart, then go on")
