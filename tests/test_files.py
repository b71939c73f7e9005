"""The one write path and the one ownership test: a target is replaced whole or not at all, and only when the lab
wrote it and nobody changed it since."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from lab_utils.errors import LabError
from lab_utils.files import PROJECT_ROOT, check_output, digest, owned, registry_path, write_file, write_folder


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


def test_a_user_s_file_or_folder_an_input_the_lab_s_source_or_a_wrong_kind_is_refused(tmp_path):
    (tmp_path / "summaries.csv").write_text("dialogue,summary\n")  # the lab's header, written by someone else
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a save_pretrained folder of the user's
    data = tmp_path / "in.csv"
    data.write_text("x")
    for path, kwargs in [
        (tmp_path / "summaries.csv", {}),
        (tmp_path / "model", {"folder": True}),
        (data, {"inputs": [data]}),
        (PROJECT_ROOT / "README.md", {}),
        (PROJECT_ROOT / "lab_utils" / "new.py", {}),
        (tmp_path, {}),  # a folder where a file is wanted
    ]:
        with pytest.raises(LabError):
            check_output(path, "the output", **kwargs)
    assert check_output(tmp_path / "empty-or-new", "the output", folder=True)


def test_a_symlinked_folder_is_written_through_its_target_a_symlink_at_a_file_is_the_user_s(tmp_path):
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
    # a symlink at a file's target is the user's, even to a file of the lab's
    with write_file(tmp_path / "ours.csv") as tmp:
        tmp.write_text("ours")
    (tmp_path / "link.csv").symlink_to(tmp_path / "ours.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere")
    for name in ("link.csv", "dangling.csv"):
        with pytest.raises(LabError, match="not the lab.s"), write_file(tmp_path / name) as tmp:
            tmp.write_text("new")
        assert (tmp_path / name).is_symlink()
    assert (tmp_path / "ours.csv").read_text() == "ours" and not (tmp_path / "nowhere").exists()


def test_what_appears_during_the_work_or_inside_the_lab_s_folder_is_the_user_s(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(LabError, match="not the lab.s"), write_folder(target) as tmp:
        (tmp / "weights").write_text("ours")
        target.mkdir()  # a user's folder, made while the lab worked
        (target / "thesis.txt").write_text("mine")
    assert [p.name for p in target.iterdir()] == ["thesis.txt"]
    with write_folder(tmp_path / "ours") as tmp, write_file(tmp / "weights") as weights:
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


def write_twenty(folder, name):
    for i in range(20):
        with write_file(folder / f"{name}-{i}") as tmp:
            tmp.write_text(name)


def test_lab_processes_finishing_at_once_all_keep_their_records(tmp_path):
    processes = [multiprocessing.Process(target=write_twenty, args=(tmp_path, name)) for name in "ab"]
    [p.start() for p in processes] + [p.join() for p in processes]
    assert [p.exitcode for p in processes] == [0, 0]
    assert all(owned(path) for path in tmp_path.glob("[ab]-*")) and len(list(tmp_path.glob("[ab]-*"))) == 40


@pytest.mark.parametrize("broken", ["corrupt", "a folder", "under a file"])
def test_a_broken_registry_never_costs_a_user_s_file(broken, tmp_path, monkeypatch):
    with write_file(tmp_path / "ours.csv") as tmp:
        tmp.write_text("ours")
    (tmp_path / "mine.csv").write_text("mine")
    if broken == "under a file":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "mine.csv"))
    else:
        registry_path().unlink()
        registry_path().mkdir() if broken == "a folder" else registry_path().write_text("{not json")
    for name in ("ours.csv", "mine.csv"):  # what the registry no longer vouches for is the user's
        with pytest.raises(LabError, match="not the lab.s"), write_file(tmp_path / name) as tmp:
            tmp.write_text("new")
    if broken == "corrupt":  # started again, with what is written from now on
        with write_file(tmp_path / "new.csv") as tmp:
            tmp.write_text("new")
        assert owned(tmp_path / "new.csv") and list(json.loads(registry_path().read_text())) == [
            str(tmp_path.resolve() / "new.csv")
        ]
    else:  # written, and said in one message that it could not be recorded
        with pytest.raises(LabError, match="cannot be updated"), write_file(tmp_path / "new.csv") as tmp:
            tmp.write_text("new")
    assert [(tmp_path / n).read_text() for n in ("ours.csv", "mine.csv")] == ["ours", "mine"]
