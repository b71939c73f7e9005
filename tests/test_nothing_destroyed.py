"""Nothing the user owns is destroyed."""

# `run`, `summarize` and `bench` check their outputs and inputs first, then act. Each CLI case exits 2 with one message,
# no traceback, and no file changed. (`release` and `build-model`: tests/test_instructor.py.)

from __future__ import annotations

import io

import pytest
from conftest import refused
from notebook import code_cells

from lab_utils.__main__ import NOTEBOOK, main
from lab_utils.backstage.summarize_cli import read_dialogues
from lab_utils.config import PROJECT_ROOT, load_settings
from lab_utils.errors import LabError
from lab_utils.scoring import improvement, rouge_table

OFFLINE = load_settings("offline", environ={})


# --- 3. run and bench check their outputs before the work -----------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        str(NOTEBOOK),
        "lab2_fine_tune_peft.ipynb",
        str(PROJECT_ROOT / "lab_utils" / "x.ipynb"),
        str(PROJECT_ROOT / "tests"),
    ],
)
def test_run_never_writes_over_the_lab_s_own_files(output, capsys, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setenv("LAB_PROFILE", "offline")
    before = NOTEBOOK.read_bytes()
    refused(main(["run", "--output", output]), capsys, "--output")
    assert NOTEBOOK.read_bytes() == before and not (PROJECT_ROOT / "lab_utils" / "x.ipynb").exists()


@pytest.mark.parametrize(
    ("output", "args", "word"),
    [
        ("mine.ipynb", [], "did not write"),
        ("x.ipynb", ["-p", "NOT_A_PARAM", "3"], "NOT_A_PARAM"),
        ("x.ipynb", ["-p", "PROFILE", "1"], "1"),
        ("x.ipynb", ["-p", "LORA_RANK", "0"], "0"),
        ("x.ipynb", ["-p", "FULL_STEPS", "-1"], "-1"),
        ("x.ipynb", ["-p", "FULL_STEPS", "2.5"], "2.5"),
    ],
)
def test_run_checks_its_output_and_parameters_before_any_cell_runs(output, args, word, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAB_PROFILE", "offline")
    (tmp_path / "mine.ipynb").write_text("{}")
    refused(main(["run", *args, "--output", str(tmp_path / output)]), capsys, word)
    assert (tmp_path / "mine.ipynb").read_text() == "{}" and not (tmp_path / "x.ipynb").exists()  # nothing executed


@pytest.mark.slow
def test_run_shows_the_failing_cell_and_its_lab_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.csv").write_text("text\nhello\n")  # DialogSum's files, not its columns
    err = refused(main(["run", "--output", str(tmp_path / "x.ipynb")]), capsys)
    assert "cell 'dataset'" in err and "lacks column(s) id, dialogue, summary, topic" in err
    assert (tmp_path / "x.ipynb").is_file()  # the executed copy, up to the failing cell


def test_bench_checks_its_report_path_before_measuring(tmp_path, capsys, monkeypatch):
    (mine := tmp_path / "report.json").write_text("the user's")
    monkeypatch.setattr("lab_utils.backstage.bench.measure", lambda *a, **k: pytest.fail("measured before the check"))
    code = main(["bench", "--smoke", "--only", "1", "--output", str(mine)])
    refused(code, capsys, "error: the report (--output)", "already exists")
    assert mine.read_text() == "the user's"


# --- 4. summarize never destroys its input, checks its output first, and reads input as people write it -------------


@pytest.fixture
def dialogues_csv(tmp_path, monkeypatch):
    """A user's CSV with more columns than the dialogues (what `--output same.csv same.csv` destroyed)."""
    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "calls.csv"
    path.write_text('id,dialogue,owner\n1,"#Person1#: Hi.\n#Person2#: Hello.",ann\n2,"#Person1#: Bye.",bob\n')
    return path


@pytest.mark.parametrize(
    ("output", "word", "source"),
    [
        ("calls.csv", "is also the input", "calls.csv"),
        ("./calls.csv", "is also the input", "calls.csv"),
        ("{tmp}/calls.csv", "is also the input", "calls.csv"),
        ("{tmp}/calls.csv", "is also the input", "./calls.csv"),  # the input spelled otherwise than the output
        (".", "is a folder", "calls.csv"),
        ("mine.csv", "did not write", "calls.csv"),
        (str(PROJECT_ROOT / "lab_utils" / "out.csv"), "lab's own lab_utils", "calls.csv"),
    ],
    ids=[
        "the-input",
        "the-input-as-./",
        "the-input-absolute",
        "the-input-given-as-./",
        "a-folder",
        "a-user-s-file",
        "the-lab-s-source",
    ],
)
def test_summarize_checks_its_output_before_loading_a_model(dialogues_csv, tmp_path, capsys, output, word, source):
    (tmp_path / "mine.csv").write_text("keep me\n")
    before = dialogues_csv.read_bytes()
    # a model that cannot load: the output's problem is what is reported, so it was checked first
    code = main(["summarize", "--merged", str(tmp_path / "no-model"), "--output", output.format(tmp=tmp_path), source])
    refused(code, capsys, "--output", word)
    assert (tmp_path / "mine.csv").read_text() == "keep me\n" and dialogues_csv.read_bytes() == before


TWO = ["#Person1#: Hello, how are you?\n#Person2#: Fine, thanks.", "#Person1#: Where is the station?"]


@pytest.mark.parametrize(
    ("name", "data", "extra"),
    [
        (
            "excel.csv",
            ('\ufeffid,dialogue\r\n1,"' + TWO[0].replace("\n", "\r\n") + f'"\r\n2,{TWO[1]}\r\n').encode(),
            {},
        ),
        ("europe.csv", ('id;dialogue\n1;"' + TWO[0] + '"\n2;"' + TWO[1] + '"\n').encode(), {}),
        ("tabs.tsv", ('dialogue\tid\n"' + TWO[0] + '"\t1\n' + TWO[1] + "\t2\n").encode(), {}),
        ("UPPER.CSV", (' Dialogue ,id\n"' + TWO[0] + '",1\n"' + TWO[1] + '",2\n').encode(), {}),
        ("windows.txt", ("\r\n\r\n".join(TWO).replace("?\n", "?\r\n") + "\r\n").encode(), {}),
        ("old-mac.txt", "\r\r".join(TWO).replace("?\n", "?\r").encode(), {}),
        ("notepad.txt", "\n\n".join(TWO).encode("utf-16"), {}),
        ("spaces.txt", ("\n  \t\n".join(TWO) + "\n\n\n").encode(), {}),
        ("western.txt", "\n\n".join(TWO).replace("station", "café").encode("cp1252"), {"encoding": "cp1252"}),
    ],
)
def test_summarize_reads_input_as_people_write_it(tmp_path, name, data, extra):
    (tmp_path / name).write_bytes(data)
    want = [TWO[0], TWO[1].replace("station", "café")] if "encoding" in extra else TWO
    assert read_dialogues(str(tmp_path / name), **extra) == want


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("latin.txt", "caf\xe9".encode("latin-1"), ["not utf-8 text", "--encoding"]),
        ("book.csv", b"PK\x03\x04rest-of-a-zip", ["zip archive", "CSV UTF-8"]),
        ("quote.csv", b'dialogue\n"never closed\n', ["cannot be read as CSV"]),
        ("two.csv", b"Dialogue,DIALOGUE\nhi,ho\n", ["column 'dialogue'", "'DIALOGUE'"]),  # what it found
        ("short.csv", b"id,dialogue\n1\n", ["row 2"]),
        ("empty.csv", b"", ["is empty"]),
        ("commas.csv", b"dialogue\nhello, how are you\n", ["row 2"]),  # unquoted: not cut at the comma
        ("utf16.txt", "\n\n".join(TWO).encode("utf-16-le"), ["--encoding"]),  # no byte-order mark
        ("folder", None, ["is a folder"]),
    ],
)
def test_summarize_refuses_what_it_cannot_read_with_one_message(tmp_path, name, data, words):
    (tmp_path / name).mkdir() if data is None else (tmp_path / name).write_bytes(data)
    with pytest.raises(LabError) as error:
        read_dialogues(str(tmp_path / name))
    for word in words:
        assert word.lower() in str(error.value).lower()


def test_every_dialogue_given_is_read_or_refused_and_standard_input_in_every_state(tmp_path, monkeypatch):
    long = "#Person1#: " + "word " * 40_000  # over the csv module's default limit of 128 kB a field
    (tmp_path / "long.csv").write_text(f'dialogue\n"{long}"\n"{TWO[1]}"\n')
    assert read_dialogues(str(tmp_path / "long.csv")) == [long.strip(), TWO[1]]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f'dialogue\n"{TWO[0]}"\n"{TWO[1]}"\n'.encode())))
    assert read_dialogues("-", column="dialogue") == TWO  # a CSV on standard input
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n\n".join(TWO).encode("utf-16"))))
    assert read_dialogues("-") == TWO  # a byte-order mark, read from the bytes, not through a UTF-8 text layer
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait")))
    with pytest.raises(LabError, match="standard input is not UTF-8 text"):
        read_dialogues("-")
    closed = io.StringIO("x")
    closed.close()
    for stdin in (None, closed):
        monkeypatch.setattr("sys.stdin", stdin)
        with pytest.raises(LabError, match="standard input is closed"):
            read_dialogues("-")


# --- 5. bounds the libraries need, checked when the settings load ---------------------------------------------------


def test_settings_replace_checks_types_like_load():
    for change in ({"seed": "1"}, {"train_batch_size": 2.5}, {"gradient_checkpointing": 1}, {"nope": 1}):
        with pytest.raises(LabError):
            OFFLINE.replace(**change)
    assert OFFLINE.replace(full_lr=1).full_lr == 1.0  # a whole number is a fine learning rate


@pytest.mark.parametrize(
    ("scores", "words"),
    [
        ({}, "no scores"),
        ({"original": {"rouge1": 0.2}}, "lack rouge2"),
        ({"original": 0.2}, "not a dict"),
        ({"original": {"rouge1": [], "rouge2": [], "rougeL": [], "rougeLsum": []}}, "empty"),
    ],
)
def test_the_notebook_s_rouge_helpers_explain_misuse(scores, words):
    with pytest.raises(LabError, match=words):
        rouge_table(scores)
    if scores:
        with pytest.raises(LabError, match=words):
            improvement(next(iter(scores.values())), {"rouge1": 0, "rouge2": 0, "rougeL": 0, "rougeLsum": 0})


def test_the_notebook_writes_its_folders_only_through_write_folder():
    """Each save_pretrained / CTranslate2 conversion of the notebook writes into a `write_folder` temporary folder, so a
    folder of the user's at that place is refused (files.write_folder, tested in test_files), never written into."""
    writes = 0
    for cell_id, cell in code_cells().items():
        lines = "".join(cell["source"]).splitlines()
        for i, line in enumerate(lines):
            if ".save_pretrained(" in line or ".convert(" in line:
                writes += 1
                opening = next(lines[j] for j in range(i - 1, -1, -1) if not lines[j].startswith(" "))
                into_folder = "(folder" in line.replace("str(folder", "(folder")
                assert opening.startswith("with write_folder(") and into_folder, (cell_id, line)
    assert writes == 4  # the adapter, the merged model and its tokenizer, the CTranslate2 conversion
