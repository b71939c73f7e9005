"""Files the lab writes: one hash, one safe write, one test of what the lab wrote."""

# `digest` and `digest_of`; `write_file` and `write_folder`; `check_output`, `replaceable` and `owned`.
# A target is built under a unique temporary name in its own folder (`tempfile`), then moved into place with
# `os.replace`: a crash leaves the old target or the new one, and no fixed side name (`X.tmp`) can clobber a user's
# file. The lab marks what it writes with its digest: a folder in a file of its own (`.lab-written`), a file in a
# registry (~/.cache/flan-t5-peft-lab/written.json, under XDG_CACHE_HOME); a target is the lab's to replace while its
# digest is still the marked one. The registry is read and written under a lock (`flock` on a file beside it), so two
# lab processes finishing at once both keep their entries; it is the one file the lab writes without marking it.

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import LabError

try:
    import fcntl
except ImportError:  # Windows has no flock: there the registry is written without the lock
    fcntl = None

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARK = ".lab-written"  # in a folder the lab wrote: the digest of the rest of the folder
# the lab's own files: no command writes into them (the release folder only with `release --replace-committed`)
SOURCES = ("lab2_fine_tune_peft.ipynb", "lab_utils", "tests", "docs", ".git", ".ci", "README.md", "requirements.txt")


def digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hash of a file's bytes, or of a folder's files (relative names and bytes; the lab's mark left out)."""
    path = Path(path)
    if not path.is_file():
        return _digest.__wrapped__(path, algorithm)
    s = path.stat()  # a file's hash is kept while it is unchanged: a download checked before its write is read once
    return _digest(path, algorithm, (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _digest(path: Path, algorithm: str, stat: tuple = ()) -> str:
    h = hashlib.new(algorithm, usedforsecurity=False)  # md5: what S3 gives as an ETag
    for file in [path] if stat else sorted(p for p in path.rglob("*") if p.is_file()):
        if file != path:
            relative = file.relative_to(path)
            if relative.as_posix() == MARK:
                continue
            h.update(relative.as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def digest_of(value: object) -> str:
    """The sha256 of a value as JSON (an identity, a cache key)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def registry_path() -> Path:
    """Where the lab records what it wrote (one JSON object: absolute path -> digest)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "flan-t5-peft-lab" / "written.json"


def _registry() -> dict[str, str]:
    try:
        value = json.loads(registry_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _key(path: Path) -> str:  # a file's name in the registry: its folder's real path, and its own name (not resolved)
    return str(Path(path).parent.resolve() / Path(path).name)


def record(path: Path, sha: str) -> None:
    """Remember that the lab wrote the file `path` with the sha256 `sha` (a folder carries its own mark)."""
    registry = registry_path()
    try:
        registry.parent.mkdir(parents=True, exist_ok=True)
        with open(registry.with_name(registry.name + ".lock"), "a") as lock:
            if fcntl:
                fcntl.flock(lock, fcntl.LOCK_EX)  # held from the read to the write; released when the file closes
            entries = {p: d for p, d in _registry().items() if os.path.isfile(p)}  # files gone since: forgotten
            with write_file(registry) as tmp:
                tmp.write_text(json.dumps({**entries, _key(path): sha}, indent=0, sort_keys=True), encoding="utf-8")
    except OSError as exc:
        what = f"{path} was written, but the lab's record of what it wrote ({registry}) cannot be updated: {exc}"
        raise LabError(what, "make it a writable file, or set XDG_CACHE_HOME to a writable folder") from exc


def owned(path: Path) -> bool:
    """True when the lab wrote `path` and nobody changed it since."""
    try:
        recorded = (path / MARK).read_text(encoding="utf-8") if path.is_dir() else _registry().get(_key(path))
    except OSError:  # a folder without the lab's mark
        return False
    return recorded is not None and recorded == digest(path)


def replaceable(path: Path) -> bool:
    """True when nothing is at `path`, an empty folder, or what the lab wrote there, unchanged (a symlink: never)."""
    # a symlink is the user's, wherever it points
    return not path.is_symlink() and (not path.exists() or owned(path) or (path.is_dir() and not any(path.iterdir())))


def lab_source(path: Path) -> Path | None:
    for name in SOURCES:
        source = PROJECT_ROOT / name
        if path == source or source in path.parents or path in source.parents:
            return source
    return None


def check_output(path: str | os.PathLike, what: str, folder: bool = False, inputs: Iterable = (),
                 allowed: Path | None = None) -> Path:  # fmt: skip
    """The absolute target (symlinks resolved), refused before any work when it is not the lab's to write."""
    # refused: an input, the lab's sources (but `allowed`), a file or folder the lab did not write (or that was changed
    # since), an unwritable place
    out = Path(os.path.abspath(Path(path).expanduser())).resolve()
    fix = f"give a new {'folder' if folder else 'file'} name"
    if any(str(i) != "-" and Path(i).expanduser().resolve() == out for i in inputs):
        raise LabError(f"{what} {out} is also the input: writing it would destroy what is being read", fix)
    source = lab_source(out)
    if source is not None and not (allowed and (out == allowed.resolve() or allowed.resolve() in out.parents)):
        raise LabError(f"{what} {out} would overwrite the lab's own {source.relative_to(PROJECT_ROOT)}", fix)
    if out.exists():
        if out.is_dir() != folder:
            raise LabError(f"{what} {out} is a {'folder' if out.is_dir() else 'file'}", fix)
        if not replaceable(out) and out != (allowed and allowed.resolve()):
            what = f"{what} {out} already exists and this lab did not write it (or it was changed since)"
            raise LabError(what + "; nothing was changed", f"{fix}, or remove it yourself if you do not need it")
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise LabError(f"{what} {out} cannot be created: {parent} is not a writable folder", "choose a writable folder")
    return out


def _ready(tmp: Path, target: Path, mark: bool, mode: int) -> None:
    # `tmp` gets the user's usual permissions (tempfile's are private); `target` is checked once more at this moment
    # (`mark`): a file of the user's may have appeared there since `check_output` (a long run)
    if mark and not replaceable(target):
        raise LabError(f"{target} is there and is not the lab's (the lab did not write it, or it was changed since): "
                       "nothing was replaced", "move it away, then run this again")  # fmt: skip
    umask = os.umask(0o22)
    os.umask(umask)
    os.chmod(tmp, mode & ~umask)


@contextlib.contextmanager
def write_file(path: str | os.PathLike) -> Iterator[Path]:
    """`with write_file(target) as tmp:` write `tmp`, which becomes `target`, recorded as the lab's."""
    target = Path(path)
    mark = target != registry_path()  # the registry: the one file not recorded in itself
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial" + target.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on the disk before it takes the final name
        _ready(tmp, target, mark, 0o666)
        sha = digest(tmp) if mark else ""
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if mark:
        record(target, sha)


@contextlib.contextmanager
def write_folder(path: str | os.PathLike) -> Iterator[Path]:
    """`with write_folder(target) as tmp:` fill `tmp`, which replaces `target`, marked as the lab's."""
    # the old folder is moved to a unique name first, and removed once the new one is in place
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    old = None
    try:
        yield tmp
        (tmp / MARK).write_text(digest(tmp), encoding="utf-8")
        _ready(tmp, target, True, 0o777)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / "x")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, value: object) -> Path:
    """Write a JSON file whole (see `write_file`)."""
    with write_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def size_on_disk(path: str | os.PathLike) -> int:
    """Total size in bytes of a file, or of all files under a folder."""
    p = Path(path)
    if not p.exists():
        raise LabError(f"{p} does not exist", "check the path (did the previous step finish?)")
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def format_size(n: float) -> str:
    """A size in MB as the course writes it (decimal: 1 MB = 1,000,000 bytes), e.g. '990.3 MB'; kB below 0.1 MB."""
    return f"{n / 1e3:.1f} kB" if n < 1e5 else f"{n / 1e6:,.1f} MB"
