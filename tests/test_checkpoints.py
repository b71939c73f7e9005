"""Tests for lab_utils.checkpoints against a local moto S3 server on 127.0.0.1 (no AWS, no network)."""

from __future__ import annotations

import errno
import os
import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError

from lab_utils.backstage.local_s3 import LocalS3
from lab_utils.backstage.publish import _ensure_bucket, push_checkpoint
from lab_utils.checkpoints import size_on_disk
from lab_utils.config import parse_s3_uri
from lab_utils.errors import LabError
from lab_utils.s3 import format_size, pull, s3_client


@pytest.fixture
def bucket(local_s3) -> str:
    """A fresh bucket name per test (push creates it on the local server)."""
    return f"lab-{uuid.uuid4().hex[:12]}"


def _make_folder(root: Path) -> Path:
    ckpt = root / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text('{"d_model": 512}')
    (ckpt / "model.bin").write_bytes(os.urandom(3000))
    (ckpt / "sub" / "tokenizer.json").write_bytes(os.urandom(500))
    return ckpt


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_part_files(root: Path) -> bool:
    return not list(root.rglob("*.part"))


# ----------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("s3://bucket/some/prefix/", ("bucket", "some/prefix/")),
        ("s3://my-bucket/model.bin", ("my-bucket", "model.bin")),
        ("s3://bucket", ("bucket", "")),
    ],
)
def test_parse_s3_uri_good(uri, expected):
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["bucket/key", "https://bucket/key", "s3://", "s3:///key", "s3://Bad_Bucket/k", ""],
)
def test_parse_s3_uri_bad(uri):
    with pytest.raises(LabError, match="s3://"):
        parse_s3_uri(uri)


def test_sizes(tmp_path):
    ckpt = _make_folder(tmp_path)
    assert size_on_disk(ckpt) == len('{"d_model": 512}') + 3000 + 500
    assert size_on_disk(ckpt / "model.bin") == 3000
    assert format_size(945_000_000) == "945.0 MB"
    assert format_size(999) == "999 B"
    assert format_size(1_500_000_000) == "1.5 GB"


# ----------------------------------------------------------------------------------- round trips


def test_folder_round_trip(tmp_path, bucket, capsys):
    ckpt = _make_folder(tmp_path)
    keys = push_checkpoint(ckpt, f"s3://{bucket}/runs/ckpt/")
    assert sorted(keys) == [
        "runs/ckpt/config.json",
        "runs/ckpt/model.bin",
        "runs/ckpt/sub/tokenizer.json",
    ]

    out = pull(f"s3://{bucket}/runs/ckpt/", tmp_path / "back")
    assert out == tmp_path / "back"
    assert _files(out) == _files(ckpt)
    assert _no_part_files(tmp_path)

    # Pushing again uploads nothing: the remote copies have the same size and MD5.
    assert push_checkpoint(ckpt, f"s3://{bucket}/runs/ckpt") == []
    assert "skipped" in capsys.readouterr().out


def test_single_file_round_trip(tmp_path, bucket):
    src = tmp_path / "adapter.bin"
    src.write_bytes(os.urandom(2048))
    assert push_checkpoint(src, f"s3://{bucket}/adapters/") == ["adapters/adapter.bin"]

    dest = pull(f"s3://{bucket}/adapters/adapter.bin", tmp_path / "out" / "a.bin")
    assert dest == tmp_path / "out" / "a.bin"
    assert dest.read_bytes() == src.read_bytes()

    # Into an existing folder: keeps the object's name.
    (tmp_path / "dir").mkdir()
    dest2 = pull(f"s3://{bucket}/adapters/adapter.bin", tmp_path / "dir")
    assert dest2 == tmp_path / "dir" / "adapter.bin" and dest2.read_bytes() == src.read_bytes()


def test_multipart_round_trip_and_skip(tmp_path, bucket, capsys):
    """> 8 MB goes up in parts: the ETag is "md5-of-md5s-N", which we still verify."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024))
    push_checkpoint(src, f"s3://{bucket}/big.bin")
    etag = s3_client().head_object(Bucket=bucket, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-2")

    dest = pull(f"s3://{bucket}/big.bin", tmp_path / "big-copy.bin")
    assert dest.read_bytes() == src.read_bytes()
    capsys.readouterr()
    pull(f"s3://{bucket}/big.bin", dest)
    assert "skipped" in capsys.readouterr().out
    # Same size, different bytes: the multipart ETag catches it.
    with open(dest, "r+b") as f:
        f.write(b"\0" * 16)
    pull(f"s3://{bucket}/big.bin", dest)
    assert dest.read_bytes() == src.read_bytes()


def test_second_pull_skips(tmp_path, bucket, capsys):
    ckpt = _make_folder(tmp_path)
    push_checkpoint(ckpt, f"s3://{bucket}/c/")
    out = pull(f"s3://{bucket}/c/", tmp_path / "back")
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    time.sleep(0.01)
    pull(f"s3://{bucket}/c/", out)
    assert "3 of 3 file(s) skipped (already up to date)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_corrupted_local_file_is_downloaded_again(tmp_path, bucket, capsys):
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(4096))
    push_checkpoint(src, f"s3://{bucket}/model.bin")
    dest = tmp_path / "copy.bin"
    dest.write_bytes(os.urandom(4096))  # same size, different bytes
    capsys.readouterr()
    pull(f"s3://{bucket}/model.bin", dest)
    assert "skipped" not in capsys.readouterr().out
    assert dest.read_bytes() == src.read_bytes()


# ----------------------------------------------------------------------------------- failures


def test_missing_key_names_uri(tmp_path, bucket):
    push_checkpoint(_make_folder(tmp_path), f"s3://{bucket}/ckpt/")
    uri = f"s3://{bucket}/ckpt/nope.bin"
    with pytest.raises(LabError) as e:
        pull(uri, tmp_path / "x.bin")
    assert uri in str(e.value) and "not found" in str(e.value)
    assert not (tmp_path / "x.bin").exists() and _no_part_files(tmp_path)


def test_missing_prefix_names_uri(tmp_path, bucket):
    push_checkpoint(_make_folder(tmp_path), f"s3://{bucket}/ckpt/")
    uri = f"s3://{bucket}/other/"
    with pytest.raises(LabError, match=uri):
        pull(uri, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", ["model.bin", "folder/"])
def test_missing_bucket(tmp_path, local_s3, key):
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/{key}"
    with pytest.raises(LabError, match="does not exist") as e:
        pull(uri, tmp_path / "x")
    assert uri in str(e.value)


def test_unreachable_endpoint_fails_fast(tmp_path, local_s3, monkeypatch):
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    t0 = time.monotonic()
    with pytest.raises(LabError) as e:
        pull("s3://some-bucket/model.bin", tmp_path / "m.bin")
    assert time.monotonic() - t0 < 20
    msg = str(e.value)
    assert "AWS_ENDPOINT_URL_S3" in msg and endpoint in msg
    assert _no_part_files(tmp_path)

    src = tmp_path / "up.bin"
    src.write_bytes(b"x" * 10)
    with pytest.raises(LabError, match="AWS_ENDPOINT_URL_S3"):
        push_checkpoint(src, "s3://some-bucket/up.bin")


def test_corrupted_download_is_discarded(tmp_path, bucket, monkeypatch):
    """If the bytes do not match the ETag, no file and no .part are left behind."""
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(1000))
    push_checkpoint(src, f"s3://{bucket}/m.bin")
    client = s3_client()
    real_head = client.head_object

    def lying_head(**kw):
        head = real_head(**kw)
        head["ETag"] = '"00000000000000000000000000000000"'
        return head

    monkeypatch.setattr(client, "head_object", lying_head)
    with pytest.raises(LabError, match="corrupted"):
        pull(f"s3://{bucket}/m.bin", tmp_path / "out" / "m.bin", client=client)
    assert not (tmp_path / "out" / "m.bin").exists() and _no_part_files(tmp_path)


def test_disk_full_is_reported(tmp_path, bucket, monkeypatch):
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(1000))
    push_checkpoint(src, f"s3://{bucket}/m.bin")
    client = s3_client()

    def full_disk(bucket, key, fileobj, **kw):
        fileobj.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client, "download_fileobj", full_disk)
    with pytest.raises(LabError, match="No space left on device"):
        pull(f"s3://{bucket}/m.bin", tmp_path / "out" / "m.bin", client=client)
    assert _no_part_files(tmp_path)


def test_no_credentials(tmp_path, local_s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(LabError, match="credentials") as e:
        pull("s3://some-bucket/model.bin", tmp_path / "m.bin")
    assert "LAB_S3_ANONYMOUS=true" in str(e.value) and "AWS_PROFILE" in str(e.value) and "SageMaker" in str(e.value)


def test_access_denied(tmp_path, local_s3, monkeypatch):
    client = s3_client()

    def denied(**kw):
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}},
            "HeadObject",
        )

    monkeypatch.setattr(client, "head_object", denied)
    with pytest.raises(LabError, match="denied") as e:
        pull("s3://some-bucket/model.bin", tmp_path / "m.bin", client=client)
    assert "s3://some-bucket/model.bin" in str(e.value)


def test_never_creates_bucket_on_real_aws():
    created = []

    def head_bucket(**kw):
        raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")

    fake = SimpleNamespace(
        meta=SimpleNamespace(endpoint_url="https://s3.us-east-1.amazonaws.com", region_name="us-east-1"),
        head_bucket=head_bucket,
        create_bucket=lambda **kw: created.append(kw),
    )
    with pytest.raises(LabError, match="does not exist"):
        _ensure_bucket(fake, "somebody-elses-bucket", "s3://somebody-elses-bucket/x")
    assert created == []


def test_anonymous_client_reads_public_bucket(tmp_path, bucket):
    src = tmp_path / "p.bin"
    src.write_bytes(b"public")
    push_checkpoint(src, f"s3://{bucket}/p.bin")
    # moto, like S3, refuses unsigned requests to a private object ...
    with pytest.raises(LabError, match="denied"):
        pull(f"s3://{bucket}/p.bin", tmp_path / "q.bin", anonymous=True)
    assert _no_part_files(tmp_path)
    # ... and serves them once the object is public.
    s3_client().put_object_acl(Bucket=bucket, Key="p.bin", ACL="public-read")
    dest = pull(f"s3://{bucket}/p.bin", tmp_path / "q.bin", anonymous=True)
    assert dest.read_bytes() == b"public"


# ----------------------------------------------------------------------------------- server


def test_subprocess_server_starts_and_stops(tmp_path):
    server = LocalS3(mode="subprocess", log_path=tmp_path / "moto.log").start()
    try:
        assert server.running and server.endpoint_url.startswith("http://127.0.0.1:")
        import boto3

        env = server.env()
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL_S3"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="sub-bucket")
        client.put_object(Bucket="sub-bucket", Key="k", Body=b"hi")
        assert client.get_object(Bucket="sub-bucket", Key="k")["Body"].read() == b"hi"
        port = server.port
    finally:
        server.stop()
    assert not server.running and server.process.returncode is not None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
