"""The one write path and the one ownership test: a target is replaced whole or not at all, and only when the lab
wrote it and nobody changed it since."""

from __future__ import annotations

import os

import pytest

from lab_utils.errors import LabError
from lab_utils.files import PROJECT_ROOT, check_output, digest, owned, write_file, write_folder


@pytest.fixture(autouse=True)
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.csv"
    with write_file(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(ZeroDivisionError), write_file(target) as tmp:
        tmp.write_text("half")
        raise ZeroDivisionError
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out.csv"]


def test_side_names_of_the_user_are_never_touched(tmp_path):
    for name in ("out.csv.tmp", "out.csv.partial", "model.old", "model.partial", "model.building"):
        (tmp_path / name).write_text("the user's")
    with write_file(tmp_path / "out.csv") as tmp:
        tmp.write_text("ours")
    for _ in range(2):  # a second write replaces the first folder
        with write_folder(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("ours")
    assert all((tmp_path / n).read_text() == "the user's" for n in ("out.csv.tmp", "model.old", "model.partial"))
    assert (tmp_path / "model" / "weights").read_text() == "ours"


def test_the_lab_replaces_what_it_wrote_until_someone_changes_it(tmp_path):
    target = tmp_path / "summaries.csv"
    with write_file(target) as tmp:
        tmp.write_text("dialogue,summary\n")
    assert check_output(target, "the output") == target.resolve() and owned(target.resolve())
    target.write_text("dialogue,summary\nedited by hand\n")
    with pytest.raises(LabError, match="did not write"):
        check_output(target, "the output")


def test_a_file_that_looks_like_ours_is_still_the_user_s(tmp_path):
    user = tmp_path / "summaries.csv"
    user.write_text("dialogue,summary\n")  # the lab's header, written by someone else
    with pytest.raises(LabError):
        check_output(user, "the output")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a save_pretrained folder of the user's
    with pytest.raises(LabError):
        check_output(folder, "the output", folder=True)
    assert check_output(tmp_path / "empty-or-new", "the output", folder=True)


def test_inputs_sources_and_kinds_are_refused(tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("x")
    for path, kwargs in [
        (data, {"inputs": [data]}),
        (PROJECT_ROOT / "README.md", {}),
        (PROJECT_ROOT / "lab_utils" / "new.py", {}),
        (tmp_path, {}),  # a folder where a file is wanted
    ]:
        with pytest.raises(LabError):
            check_output(path, "the output", **kwargs)


def test_a_symlinked_folder_is_written_through_its_target(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    out = check_output(link, "the output", folder=True)
    for _ in range(2):  # the second run replaces what the first wrote
        with write_folder(out) as tmp:
            (tmp / "a").write_text("1")
        out = check_output(link, "the output", folder=True)
    assert link.is_symlink() and (real / "a").read_text() == "1"


def test_what_appears_during_the_work_or_inside_the_lab_s_folder_is_the_user_s(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(LabError, match="not the lab.s"), write_folder(target) as tmp:
        (tmp / "weights").write_text("ours")
        target.mkdir()  # a user's folder, made while the lab worked
        (target / "thesis.txt").write_text("mine")
    assert [p.name for p in target.iterdir()] == ["thesis.txt"]
    with write_folder(tmp_path / "ours") as tmp, write_file(tmp / "weights", mark=False) as weights:
        weights.write_text("ours")
    (tmp_path / "ours" / ".notes").write_text("a hidden file of the user's")
    with pytest.raises(LabError):
        check_output(tmp_path / "ours", "the output", folder=True)
    umask = os.umask(0o22)
    os.umask(umask)
    assert (tmp_path / "ours" / "weights").stat().st_mode & 0o777 == 0o666 & ~umask  # the user's usual modes
    assert (tmp_path / "ours").stat().st_mode & 0o777 == 0o777 & ~umask


def test_digest_changes_with_any_byte_or_name(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    first = digest(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    second = digest(tmp_path)
    os.rename(tmp_path / "a", tmp_path / "b")
    assert len({first, second, digest(tmp_path)}) == 3
