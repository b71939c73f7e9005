"""Where a command may write: never over what the lab did not create, its own input, or the lab's source files.

Every command checks its output paths with these functions before any work (before a model loads), so a bad path
costs nothing and destroys nothing. A path given on the command line is resolved against the folder the user
stands in (`user_path`); settings (`LAB_WORK_DIR`, ...) resolve against the project root, as the notebook's do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import PROJECT_ROOT
from .errors import LabError

# the lab's own files: no command writes into them (the release folder only with `release --replace-committed`)
SOURCES = tuple(
    PROJECT_ROOT / name
    for name in (
        "lab2_fine_tune_peft.ipynb",
        "lab_utils",
        "tests",
        "docs",
        ".git",
        ".ci",
        "README.md",
        "requirements.txt",
        "pyproject.toml",
    )
)


def user_path(text: str | os.PathLike) -> Path:
    """A path from the command line: `~` expanded, relative to the folder the user stands in, made absolute."""
    return Path(os.path.abspath(Path(text).expanduser()))


def _source_it_touches(path: Path, allowed: Iterable[Path] = ()) -> Path | None:
    """The lab source `path` is, lies inside, or contains (None when it touches none, or lies in `allowed`)."""
    path = path.resolve()
    if any(path == a.resolve() or a.resolve() in path.parents for a in allowed):
        return None
    for source in SOURCES:
        if path == source or source in path.parents or path in source.parents:
            return source
    return None


def check_output_file(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    ours: Callable[[Path], bool] = lambda p: False,
    what: str = "the output",
) -> Path:
    """The absolute output file, after checking that writing it destroys nothing and will succeed.

    Refused: a folder, one of the command's `inputs`, a lab source file, a missing or read-only folder, and an
    existing file that `ours` does not recognize as one the lab wrote (a user's file is never overwritten).
    """
    out = user_path(path)
    fix = "give the name of a new file"
    if out.is_dir():
        raise LabError(f"{what} {out} is a folder", fix + " (e.g. " + str(out / "summaries.csv") + ")")
    for given in inputs:
        if str(given) != "-" and user_path(given).resolve() == out.resolve():
            raise LabError(f"{what} {out} is also the input: writing it would destroy what is being read", fix)
    source = _source_it_touches(out)
    if source is not None:
        raise LabError(f"{what} {out} would overwrite the lab's own {source.relative_to(PROJECT_ROOT)}", fix)
    if not out.parent.is_dir():
        raise LabError(f"the folder of {what} {out} does not exist", f"create it (mkdir -p {out.parent}), or {fix}")
    if not os.access(out.parent, os.W_OK):
        raise LabError(f"the folder of {what} {out} is not writable for you", f"choose a writable folder, or {fix}")
    if out.exists() and not ours(out):
        raise LabError(
            f"{what} {out} already exists and was not written by this lab command",
            f"{fix}, or remove that file yourself if you do not need it",
        )
    return out


def check_output_dir(
    path: str | os.PathLike,
    foreign: Callable[[Path], list[str]],
    what: str,
    allowed_sources: Iterable[Path] = (),
) -> Path:
    """The absolute output folder, after checking that replacing it destroys nothing the lab did not create.

    Accepted: a new folder, an empty one, or one in which `foreign` finds no file the lab did not write (e.g. a
    release: its MANIFEST lists every file). Refused before any work: anything else, and a folder that is, holds or
    lies in the lab's source files (unless inside `allowed_sources`).
    """
    out = user_path(path)
    source = _source_it_touches(out, allowed_sources)
    if source is not None:
        raise LabError(
            f"{what} {out} would overwrite the lab's own {source.relative_to(PROJECT_ROOT)}",
            "give a new folder outside the lab's source files (e.g. under data/)",
        )
    if out.exists() and not out.is_dir():
        raise LabError(f"{what} {out} is a file, not a folder", "give the path of a new folder")
    others = sorted(foreign(out)) if out.is_dir() and any(out.iterdir()) else []
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise LabError(
            f"{what} {out} holds files this lab did not write ({listed}); nothing was changed",
            "give a new (or empty) folder; the lab replaces only a folder it wrote itself",
        )
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise LabError(f"{what} {out} cannot be created: {parent} is not writable for you", "choose a writable folder")
    return out


# what `save_pretrained` of a T5 model and its tokenizer writes: a folder holding only these is a model the lab saved
MODEL_FOLDER_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "special_tokens_map.json",
        "spiece.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "added_tokens.json",
    }
)


def not_a_saved_model(folder: Path) -> list[str]:
    """What in `folder` is not from `save_pretrained` of a model and its tokenizer (all of it, without a config)."""
    names = sorted(p.name for p in folder.iterdir())
    if "config.json" not in names:
        return names
    return [n for n in names if n not in MODEL_FOLDER_FILES or not (folder / n).is_file()]
