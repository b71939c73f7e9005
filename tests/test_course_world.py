"""The course profile, proven without the Hub or AWS."""

# the whole notebook runs (`python -m lab_utils run`) with `LAB_PROFILE=course` against the course's artifacts in the
# course's formats (tests/course_world.py), served by a local S3 server under the course's bucket name; and the course's
# results file is found where the course keeps it.

from __future__ import annotations

import re

import boto3
import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from course_world import COURSE_BUCKET, COURSE_PREFIX, build_course_artifacts
from notebook import code_cells, output_text

from lab_utils import s3 as transfers
from lab_utils.__main__ import main
from lab_utils.checkpoints import RESULTS_FILE, find_results_file
from lab_utils.config import PROJECT_ROOT, RELEASE_DIR, load_settings
from lab_utils.errors import LabError
from lab_utils.results_file import read_results_file
from lab_utils.s3 import push
from lab_utils.scoring import ROUGE_KEYS, score_results_file

DIALOGSUM = load_settings("offline", environ={}).path("../shared/dialogsum")


@pytest.fixture(scope="module")
def course_artifacts(tmp_path_factory):
    return build_course_artifacts(tmp_path_factory.mktemp("course-artifacts"))


@pytest.fixture
def course_bucket(local_s3, course_artifacts):
    """The course's bucket on the local S3 server, holding the course-format artifacts."""
    for name, path in course_artifacts.items():
        push(path, COURSE_PREFIX + name + ("/" if path.is_dir() else ""))
    yield COURSE_PREFIX

    boto3.resource("s3").Bucket(COURSE_BUCKET).objects.all().delete()


def course_environment(monkeypatch, work) -> None:
    """The course profile with every download pointed at local stand-ins: the kernel inherits this environment."""
    monkeypatch.setenv("LAB_PROFILE", "course")
    monkeypatch.setenv("LAB_MODEL_ID", str(RELEASE_DIR / "flan-t5-tiny"))
    monkeypatch.setenv("LAB_DATA_DIR", str(DIALOGSUM))
    monkeypatch.setenv("LAB_ROUGE_METRIC", str(PROJECT_ROOT / "lab_utils" / "backstage" / "rouge_metric"))
    monkeypatch.setenv("LAB_WORK_DIR", str(work))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")  # no Hub: anything that tried would fail at once


@pytest.mark.slow
@pytest.mark.skipif(not DIALOGSUM.is_dir(), reason=f"needs DialogSum in {DIALOGSUM}")
def test_the_whole_notebook_runs_in_the_course_profile(course_bucket, course_artifacts, monkeypatch, tmp_path):
    course_environment(monkeypatch, tmp_path / "work")
    out = tmp_path / "course.ipynb"
    assert main(["run", "-p", "EVAL_DIALOGUES", "3", "--output", str(out)]) == 0  # the README's `run`, papermill
    cells = code_cells(out)
    errors = [o for c in cells.values() for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    from in_jupyterlab import stderr_problems  # what would show as a pink box in JupyterLab: none but progress bars

    assert not (boxes := {cell_id: p for cell_id, c in cells.items() if (p := stderr_problems(c))}), boxes
    assert "PROFILE: COURSE" in output_text(cells["settings"])
    # the course's checkpoint (pytorch_model.bin) and adapter (adapter_model.bin, peft 0.3 config) loaded
    assert "pytorch_model.bin" in {p.name for p in (tmp_path / "work" / "course" / "pulled").rglob("*")}
    # loaded frozen, by the step the cell writes (peft's default is frozen too, so the call is checked as written)
    assert "is_trainable=False" in "".join(cells["load-adapter"]["source"])
    assert "trainable model parameters: 0\n" in output_text(cells["load-adapter"])
    assert f"pulled from {COURSE_PREFIX}{RESULTS_FILE}" in output_text(cells["results-file"])
    # the full-test-set table is the lab's scoring of the course's file
    expected = score_results_file(read_results_file(course_artifacts[RESULTS_FILE]))
    table = output_text(cells["file-rouge-three"])
    for model, scores in expected.items():
        row = re.search(rf"^{model}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", table, re.MULTILINE)
        assert row, f"no {model} row in\n{table}"
        assert [float(x) for x in row.groups()] == [round(scores[k], 4) for k in ROUGE_KEYS]


def test_the_course_s_results_file_is_pulled_or_the_lab_folder_s_copy_preferred(tmp_path, capsys, course_bucket):
    settings = load_settings("course", environ={}, work_dir=str(tmp_path))
    path = find_results_file(settings)  # no local copy: pulled
    assert path.parent.name == "pulled" and "pulled from s3://dlai-generative-ai/models/" in capsys.readouterr().out
    assert len(read_results_file(path)) == 1500
    (tmp_path / RESULTS_FILE).write_bytes(path.read_bytes())
    boto3.resource("s3").Bucket(COURSE_BUCKET).objects.all().delete()  # the lab folder's copy needs no S3 copy
    assert find_results_file(settings) == tmp_path / RESULTS_FILE
    assert "the lab folder's copy" in capsys.readouterr().out


def test_neither_place_names_both(tmp_path, local_s3):
    boto3.client("s3").create_bucket(Bucket="empty-course-bucket")
    settings = load_settings("course", environ={}, work_dir=str(tmp_path), s3_uri="s3://empty-course-bucket/models/")
    with pytest.raises(LabError) as error:
        find_results_file(settings)
    message = str(error.value)
    assert str(tmp_path / RESULTS_FILE) in message and "s3://empty-course-bucket/models/" + RESULTS_FILE in message


@pytest.mark.parametrize("problem", ["no credentials", "access denied"])
def test_credential_problems_on_the_course_bucket_say_what_to_try(problem, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        if problem == "no credentials":
            raise NoCredentialsError()
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "HeadObject")

    client = transfers.client()
    monkeypatch.setattr(client, "head_object", refuse)
    monkeypatch.setattr(client, "list_objects_v2", refuse)
    monkeypatch.setattr(transfers, "client", lambda anonymous=False: client)
    settings = load_settings("course", environ={}, work_dir=str(tmp_path))
    with pytest.raises(LabError) as error:
        find_results_file(settings)
    fix = error.value.fix
    assert "LAB_S3_ANONYMOUS=true" in fix and "SageMaker" in fix and "AWS_PROFILE" in fix
