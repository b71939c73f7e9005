"""lab_utils.s3 against a real moto server on 127.0.0.1 (the `local_s3` fixture): bytes on disk, errors and causes."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from boto3.exceptions import RetriesExceededError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ResponseStreamingError
from conftest import SETTINGS

from lab_utils import s3
from lab_utils.errors import LabError
from lab_utils.files import digest
from lab_utils.s3 import NotFoundOnS3, check_publish_target, pull, push, upload_folder


@pytest.fixture
def bucket(local_s3) -> str:
    """A fresh bucket name per test (push creates it on the local server)."""
    return f"lab-{uuid.uuid4().hex[:12]}"


def folder(root: Path) -> Path:
    ckpt = root / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text('{"d_model": 512}')
    (ckpt / "model.bin").write_bytes(os.urandom(9_000_000))  # over 8 MB: a multipart upload
    (ckpt / "sub" / "tokenizer.json").write_bytes(os.urandom(500))
    return ckpt


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temporaries(root: Path) -> list[Path]:
    """The transfers' temporary files (files.write_file's, s3transfer's beside them)."""
    return [p for p in root.rglob("*") if ".partial" in p.name]


def put(bucket: str, key: str, body: bytes, **extra) -> None:
    """An object put directly with boto3 (not with the lab's push)."""
    boto3.client("s3").create_bucket(Bucket=bucket)  # in us-east-1, creating it again is fine
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body, **extra)


def test_round_trips_and_second_transfers_skip(tmp_path, bucket, capsys):
    ckpt = folder(tmp_path)
    uri = f"s3://{bucket}/runs/ckpt/"
    assert sorted(push(ckpt, uri)) == ["runs/ckpt/config.json", "runs/ckpt/model.bin", "runs/ckpt/sub/tokenizer.json"]
    head = boto3.client("s3").head_object(Bucket=bucket, Key="runs/ckpt/model.bin")
    assert head["Metadata"]["sha256"] == digest(ckpt / "model.bin") and head["ETag"].endswith('-2"')
    assert push(ckpt, uri) == [] and "skipped" in capsys.readouterr().out

    back = pull(uri, tmp_path / "back")
    assert back == tmp_path / "back" and files(back) == files(ckpt)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in back.rglob("*")}
    assert pull(uri, back) == back and "skipped" in capsys.readouterr().out
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in back.rglob("*")} == before  # nothing written again

    # one file: to a file name, and into an existing folder under the object's name
    assert pull(uri + "config.json", tmp_path / "c.json").read_bytes() == (ckpt / "config.json").read_bytes()
    assert pull(uri + "sub/tokenizer.json", tmp_path) == tmp_path / "tokenizer.json"

    # a copy changed since the pull is the user's: refused before any download, untouched; the lab's is replaced
    (back / "sub" / "tokenizer.json").write_bytes(mine := os.urandom(500))
    with pytest.raises(LabError, match="did not write"):
        pull(uri, back)
    assert (back / "sub" / "tokenizer.json").read_bytes() == mine
    (back / "sub" / "tokenizer.json").unlink()
    (ckpt / "config.json").write_text('{"d_model": 64}')  # published again, with other bytes
    push(ckpt, uri)
    pull(uri, back)
    assert files(back) == files(ckpt) and not temporaries(tmp_path)


def test_upload_folder_and_publish_target(tmp_path, bucket):
    settings = SETTINGS.replace(s3_uri=f"s3://{bucket}/models/")
    check_publish_target(settings)  # creates the bucket on the local server
    (tmp_path / "results.csv").write_text("id,summary\n1,hi\n")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    upload_folder(settings, tmp_path, ["results.csv", "adapter"])
    assert pull(settings.s3("adapter/"), tmp_path / "a").joinpath("adapter_config.json").read_text() == "{}"
    assert pull(settings.s3("results.csv"), tmp_path / "r.csv").read_text() == "id,summary\n1,hi\n"


def test_the_bucket_is_never_created_off_the_local_server(tmp_path, bucket, monkeypatch):
    monkeypatch.setattr(s3, "is_local", lambda client: False)  # as on AWS
    (tmp_path / "m.bin").write_bytes(b"weights")
    with pytest.raises(LabError, match="does not exist"):
        push(tmp_path / "m.bin", f"s3://{bucket}/m.bin")
    assert bucket not in [b["Name"] for b in boto3.client("s3").list_buckets().get("Buckets", [])]


def test_without_the_lab_s_sha256_the_md5_etag_checks_and_a_wrong_sha256_is_refused(tmp_path, bucket):
    data = os.urandom(3000)
    put(bucket, "public/m.bin", data)  # as in the course's bucket: no metadata, a plain MD5 ETag
    assert (dest := pull(f"s3://{bucket}/public/m.bin", tmp_path / "m.bin")).read_bytes() == data
    put(bucket, "public/m.bin", data := os.urandom(3000))  # published again: same size, other bytes: the MD5 tells
    assert pull(f"s3://{bucket}/public/m.bin", dest).read_bytes() == data

    put(bucket, "m.bin", b"the bytes", Metadata={"sha256": hashlib.sha256(b"other bytes").hexdigest()})
    with pytest.raises(LabError, match="corrupted"):
        pull(f"s3://{bucket}/m.bin", tmp_path / "out" / "m.bin")
    assert not (tmp_path / "out" / "m.bin").exists() and not temporaries(tmp_path)


LOST = ResponseStreamingError(error="connection reset by peer")


@pytest.mark.parametrize(
    "fault, cause",
    [(LOST, LOST), (RetriesExceededError(LOST), LOST), (OSError(errno.ENOSPC, "No space left"), None)],
    ids=["connection lost", "after s3transfer's retries", "disk full"],
)
def test_a_download_that_dies_midway_leaves_nothing(tmp_path, bucket, monkeypatch, fault, cause):
    data = os.urandom(200_000)
    put(bucket, "ckpt/m.bin", data)
    client = s3.client()

    def dying(bucket, key, filename, **kwargs):
        Path(filename).write_bytes(data[:50_000])
        raise fault

    monkeypatch.setattr(client, "download_file", dying)
    monkeypatch.setattr(s3, "client", lambda anonymous=False: client)
    with pytest.raises(LabError) as error:
        pull(f"s3://{bucket}/ckpt/", tmp_path / "out")
    assert error.value.__cause__ is (cause or fault)  # the botocore error, out of boto3's wrapper
    assert not (tmp_path / "out" / "m.bin").exists() and not temporaries(tmp_path)

    monkeypatch.undo()
    assert pull(f"s3://{bucket}/ckpt/", tmp_path / "out").joinpath("m.bin").read_bytes() == data


def test_missing_key_prefix_and_bucket(tmp_path, bucket):
    put(bucket, "ckpt/model.bin", b"x")
    for uri in (f"s3://{bucket}/ckpt/typo.bin", f"s3://{bucket}/other/"):
        with pytest.raises(NotFoundOnS3) as error:
            pull(uri, tmp_path / "x")
        assert uri in str(error.value) and "LAB_S3_URI" in error.value.fix
    for key in ("model.bin", "folder/"):
        with pytest.raises(LabError, match="does not exist") as error:
            pull(f"s3://no-such-{bucket}/{key}", tmp_path / "x")
        assert not isinstance(error.value, NotFoundOnS3)
    assert not (tmp_path / "x").exists()


@pytest.fixture(params=["pull", "push"])
def transfer(request, tmp_path, local_s3):
    """A pull or a push, on the server that the environment names when it is called."""
    if request.param == "pull":
        return lambda: pull("s3://some-bucket/m.bin", tmp_path / "m.bin")
    return lambda: push(tmp_path / "up.bin", "s3://some-bucket/up.bin")  # the bucket is looked at first


def test_an_unreachable_endpoint_keeps_the_botocore_error(transfer, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")  # port 1 of 127.0.0.1: nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(LabError, match="reach") as error:
        transfer()
    assert isinstance(error.value.__cause__, EndpointConnectionError) and "127.0.0.1:1" in error.value.what
    assert "AWS_ENDPOINT_URL_S3" in error.value.fix and "lab_utils.backstage.local_s3" in error.value.fix


def test_no_credentials_keep_the_botocore_error_and_say_what_to_try(transfer, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(LabError, match="credentials") as error:
        transfer()
    assert isinstance(error.value.__cause__, NoCredentialsError)
    assert "LAB_S3_ANONYMOUS=true" in error.value.fix and "AWS_PROFILE" in error.value.fix


def test_anonymous_reads_only_public_objects(tmp_path, bucket):
    put(bucket, "p.bin", b"public")
    with pytest.raises(LabError, match="denied") as error:  # moto's 403
        pull(f"s3://{bucket}/p.bin", tmp_path / "q.bin", anonymous=True)
    assert "SageMaker" in error.value.fix and isinstance(error.value.__cause__, ClientError)
    boto3.client("s3").put_object_acl(Bucket=bucket, Key="p.bin", ACL="public-read")
    assert pull(f"s3://{bucket}/p.bin", tmp_path / "q.bin", anonymous=True).read_bytes() == b"public"


@pytest.mark.parametrize("key", ["ckpt/../evil.bin", "ckpt//etc/evil.bin"])
def test_a_key_outside_the_folder_is_refused(tmp_path, bucket, key):
    put(bucket, key, b"evil")
    with pytest.raises(LabError, match="outside"):
        pull(f"s3://{bucket}/ckpt/", tmp_path / "out" / "ckpt")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_user_s_files_beside_the_target_are_untouched(tmp_path, bucket):
    put(bucket, "m.bin", b"new")
    theirs = {tmp_path / name: os.urandom(10) for name in ("m.bin.part", "m.bin.tmp", ".m.bin.partial", "m.bin.etag")}
    for path, data in theirs.items():
        path.write_bytes(data)
    assert pull(f"s3://{bucket}/m.bin", tmp_path / "m.bin").read_bytes() == b"new"
    assert {path: path.read_bytes() for path in theirs} == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.bin", *(p.name for p in theirs)])


def test_too_little_disk_space_is_found_before_the_download(tmp_path, bucket, monkeypatch):
    put(bucket, "m.bin", os.urandom(5000))
    monkeypatch.setattr(s3.shutil, "disk_usage", lambda path: SimpleNamespace(free=100))
    with pytest.raises(LabError, match="Not enough disk space"):
        pull(f"s3://{bucket}/m.bin", tmp_path / "m.bin")
    assert not list(tmp_path.iterdir())
