"""Fault tests for checkpoint transfers: real moto servers (thread and subprocess) on 127.0.0.1 and a
small TCP proxy (tests/faultproxy.py) that cuts connections, truncates bodies or kills the server.

Each test checks that nothing is ever left under the final name and that either the next run
succeeds (resuming where it can) or the error names the problem.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3
import pytest
from faultproxy import FaultProxy

from lab_utils import s3 as transfers
from lab_utils.backstage.local_s3 import LocalS3
from lab_utils.backstage.publish import push_checkpoint
from lab_utils.errors import LabError
from lab_utils.s3 import pull, s3_client

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast_and_isolated(local_s3, monkeypatch):
    """The session's AWS isolation (from local_s3), short backoff, and no botocore-level retries."""
    monkeypatch.setattr(transfers, "RETRY_BACKOFF_S", 0.05)
    monkeypatch.setattr(transfers, "DOWNLOAD_RETRIES", 3)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # our own retry loop is what is under test


def _direct(endpoint_url: str):
    """A client that talks to the server itself (not through the proxy), for setting up objects."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _put(endpoint_url: str, bucket: str, key: str, data: bytes) -> None:
    client = _direct(endpoint_url)
    if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=key, Body=data)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _no_leftovers(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith((".part", ".part.etag"))]


def _bucket() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"


def _random_object(server: LocalS3, tmp_path: Path, size: int) -> tuple[bytes, str, str, Path]:
    """Random bytes put as s3://<fresh bucket>/m.bin; returns them, the bucket, the URI and the local destination."""
    data, bucket = os.urandom(size), _bucket()
    _put(server.endpoint_url, bucket, "m.bin", data)
    return data, bucket, f"s3://{bucket}/m.bin", tmp_path / "m.bin"


# ------------------------------------------------------------------------------------------------


def test_server_killed_mid_download_resumes_on_next_run(tmp_path, monkeypatch, capsys):
    """1. The server process dies after ~1 MB of a 3 MB body: no final file, .part kept; a new server with the
    same object -> the next run resumes (transfers only the rest) and the file is complete."""
    data = os.urandom(3 * MB)
    bucket = _bucket()
    uri = f"s3://{bucket}/ckpt/model.bin"
    dest = tmp_path / "out" / "model.bin"
    server = LocalS3(mode="subprocess", log_path=tmp_path / "moto1.log").start()
    server2 = None
    try:
        _put(server.endpoint_url, bucket, "ckpt/model.bin", data)
        with FaultProxy(server.port) as proxy:
            proxy.budget = 1 * MB
            proxy.refuse_after_budget = False  # the retries really meet a dead server
            proxy.on_budget = server.kill  # SIGKILL mid-body
            monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)

            with pytest.raises(LabError) as e:
                pull(uri, dest)
            msg = str(e.value)
            assert "interrupted" in msg and uri in msg and "again" in msg and "resume" in msg
            assert not server.running
            assert not dest.exists()
            kept = _part(dest).read_bytes()
            assert 0 < len(kept) < len(data) and data.startswith(kept)

            # moto is in-memory: a new server gets the same bytes (same MD5 ETag) under the same key.
            server2 = LocalS3(mode="subprocess", log_path=tmp_path / "moto2.log").start()
            _put(server2.endpoint_url, bucket, "ckpt/model.bin", data)
            proxy.heal(upstream_port=server2.port)
            capsys.readouterr()
            assert pull(uri, dest) == dest
            assert "resuming" in capsys.readouterr().out
            assert dest.read_bytes() == data
            # Only the missing part came over the wire (plus HTTP headers and HEAD requests).
            assert proxy.bytes_down < len(data) - len(kept) + 64 * 1024
            assert _no_leftovers(tmp_path)
    finally:
        server.stop()
        if server2 is not None:
            server2.stop()


def test_truncated_body_is_never_renamed_and_next_run_succeeds(tmp_path, local_s3, monkeypatch):
    """2. Every response is cut after 200 kB (shorter than its Content-Length): retries make some progress but
    give up with an 'interrupted' error; the next run without the fault completes it."""
    data, bucket, uri, dest = _random_object(local_s3, tmp_path, 2 * MB)
    with FaultProxy(local_s3.port) as proxy:
        proxy.per_conn = 200_000
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        with pytest.raises(LabError, match="interrupted") as e:
            pull(uri, dest)
        assert uri in str(e.value) and "3 retries" in str(e.value)
        assert proxy.cuts >= 4  # the first try and 3 retries were all cut
        assert not dest.exists()
        kept = _part(dest).read_bytes()
        assert len(kept) < len(data) and data.startswith(kept)

        proxy.heal()
        pull(uri, dest)
        assert dest.read_bytes() == data
        assert proxy.bytes_down < len(data) - len(kept) + 64 * 1024
    assert _no_leftovers(tmp_path)


def test_changed_object_restarts_from_zero(tmp_path, local_s3, monkeypatch, capsys):
    """3. The object is replaced (same size, other bytes) after an interrupted download: the next run must
    not append to the old bytes; it starts again and ends with exactly the new object."""
    old, new = os.urandom(2 * MB), os.urandom(2 * MB)
    bucket = _bucket()
    uri = f"s3://{bucket}/m.bin"
    _put(local_s3.endpoint_url, bucket, "m.bin", old)
    dest = tmp_path / "m.bin"
    with FaultProxy(local_s3.port) as proxy:
        proxy.budget = 700_000  # then every new connection is closed at once
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        with pytest.raises(LabError, match="interrupted"):
            pull(uri, dest)
        assert not dest.exists() and old.startswith(_part(dest).read_bytes())

        _put(local_s3.endpoint_url, bucket, "m.bin", new)
        proxy.heal()
        capsys.readouterr()
        pull(uri, dest)
        assert "resuming" not in capsys.readouterr().out
        assert dest.read_bytes() == new
        assert proxy.bytes_down >= len(new)  # all of it came again
    assert _no_leftovers(tmp_path)


def test_object_replaced_between_head_and_ranged_get(tmp_path, local_s3, monkeypatch):
    """3b. The ETag seen by HEAD matches the .part, but the object changes before the ranged GET: If-Match
    makes the server refuse, the .part is dropped, and the next run gets the new object."""
    old, new = os.urandom(300_000), os.urandom(300_000)
    bucket = _bucket()
    uri = f"s3://{bucket}/m.bin"
    _put(local_s3.endpoint_url, bucket, "m.bin", old)
    client = s3_client()
    stale_head = client.head_object(Bucket=bucket, Key="m.bin")
    dest = tmp_path / "m.bin"
    _part(dest).write_bytes(old[:100_000])
    dest.with_name(dest.name + ".part.etag").write_text(stale_head["ETag"])
    _put(local_s3.endpoint_url, bucket, "m.bin", new)

    monkeypatch.setattr(client, "head_object", lambda **kw: dict(stale_head))
    with pytest.raises(LabError, match="replaced on the server") as e:
        pull(uri, dest, client=client)
    assert "again" in str(e.value)
    assert not dest.exists() and _no_leftovers(tmp_path)

    pull(uri, dest)
    assert dest.read_bytes() == new


@pytest.mark.parametrize("sidecar", ["right-etag", "none"])
def test_garbage_part_is_never_renamed(tmp_path, local_s3, sidecar):
    """A .part with wrong bytes (even one claiming the right ETag) never becomes the file: it is restarted."""
    data, bucket, uri, dest = _random_object(local_s3, tmp_path, 500_000)
    _part(dest).write_bytes(os.urandom(200_000))
    if sidecar == "right-etag":
        etag = s3_client().head_object(Bucket=bucket, Key="m.bin")["ETag"]
        dest.with_name(dest.name + ".part.etag").write_text(etag)
    pull(uri, dest)
    assert dest.read_bytes() == data
    assert _no_leftovers(tmp_path)


def test_missing_key_names_uri(tmp_path, local_s3):
    """4. A key that does not exist: the error names the full URI; nothing is written."""
    bucket = _bucket()
    _put(local_s3.endpoint_url, bucket, "ckpt/model.bin", b"x" * 100)
    uri = f"s3://{bucket}/ckpt/typo.bin"
    with pytest.raises(LabError) as e:
        pull(uri, tmp_path / "out" / "typo.bin")
    assert uri in str(e.value) and "not found" in str(e.value) and "LAB_S3_URI" in str(e.value)
    assert not (tmp_path / "out" / "typo.bin").exists() and _no_leftovers(tmp_path)


def test_wrong_credentials_are_reported(tmp_path, monkeypatch):
    """5. A server that checks credentials (moto with INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are
    refused; the error says access was denied and which settings to fix; nothing is written."""
    server = LocalS3(
        mode="subprocess",
        log_path=tmp_path / "moto-auth.log",
        extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
    ).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        for uri, local in [
            ("s3://lab-bucket/ckpt/model.bin", tmp_path / "m.bin"),  # HEAD: a bare 403
            ("s3://lab-bucket/ckpt/", tmp_path / "folder"),  # LIST: InvalidAccessKeyId
        ]:
            with pytest.raises(LabError, match="denied") as e:
                pull(uri, local)
            msg = str(e.value)
            assert uri in msg and "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg
            assert not local.exists()
        src = tmp_path / "up.bin"
        src.write_bytes(b"weights")
        with pytest.raises(LabError, match="denied"):
            push_checkpoint(src, "s3://lab-bucket/up.bin")
        assert _no_leftovers(tmp_path)
    finally:
        server.stop()


@pytest.mark.parametrize("lie", ["size", "etag"])
def test_upload_is_verified(tmp_path, local_s3, monkeypatch, lie):
    """The server's answer after an upload is checked: a different size or MD5 is an error that says so."""
    bucket = _bucket()
    src = tmp_path / "adapter.bin"
    src.write_bytes(os.urandom(50_000))
    client = s3_client()
    real_head = client.head_object

    def lying_head(**kw):
        head = real_head(**kw)  # raises 404 before the upload, as it should
        if lie == "size":
            head["ContentLength"] -= 1000
        else:
            head["ETag"] = '"0123456789abcdef0123456789abcdef"'
        return head

    monkeypatch.setattr(client, "head_object", lying_head)
    with pytest.raises(LabError, match="could not be verified") as e:
        push_checkpoint(src, f"s3://{bucket}/adapter.bin", client=client)
    assert ("49000" in str(e.value)) if lie == "size" else ("MD5" in str(e.value))
    assert "again" in str(e.value)


def test_interrupt_keeps_part_for_resume(tmp_path, local_s3, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) mid-download keeps the .part (a prefix of the object); the next run resumes."""
    data, bucket, uri, dest = _random_object(local_s3, tmp_path, 600_000)
    client = s3_client()
    real = client.download_fileobj

    def interrupted(bucket, key, fileobj, **kw):
        fileobj.write(data[:250_000])
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "download_fileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pull(uri, dest, client=client)
    assert not dest.exists() and _part(dest).read_bytes() == data[:250_000]

    monkeypatch.setattr(client, "download_fileobj", real)
    pull(uri, dest, client=client)
    assert dest.read_bytes() == data and _no_leftovers(tmp_path)


@pytest.mark.parametrize("case", ["fresh", "resumed", "stalled"])
def test_transient_fault_is_retried_within_the_same_run(tmp_path, local_s3, monkeypatch, capsys, case):
    """One connection is cut (or stalls until the read timeout) mid-body; the same call retries, resuming
    from the bytes on disk, and succeeds."""
    from botocore.config import Config

    data, bucket, uri, dest = _random_object(local_s3, tmp_path, 2 * MB)
    with FaultProxy(local_s3.port) as proxy:
        proxy.budget = 900_000
        proxy.refuse_after_budget = False  # a single fault, then the network is fine again
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        client = s3_client()
        if case == "resumed":  # an earlier run left 300 kB of this same object version
            _part(dest).write_bytes(data[:300_000])
            etag = client.head_object(Bucket=bucket, Key="m.bin")["ETag"]
            dest.with_name(dest.name + ".part.etag").write_text(etag)
            proxy.heal()
            proxy.budget, proxy.refuse_after_budget = 900_000, False
        if case == "stalled":
            proxy.stall_after_budget = True
            client = boto3.session.Session().client(
                "s3", config=Config(read_timeout=1, connect_timeout=2, retries={"max_attempts": 1})
            )
        capsys.readouterr()
        pull(uri, dest, client=client)
        assert dest.read_bytes() == data
        assert proxy.cuts == 1
        assert ("resuming" in capsys.readouterr().out) == (case == "resumed")
    assert _no_leftovers(tmp_path)


@pytest.mark.slow
def test_a_silent_endpoint_is_reported_within_30_seconds(tmp_path, local_s3, monkeypatch):
    """A server that accepts the connection and never answers: one message naming AWS_ENDPOINT_URL_S3, in < 30 s."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(16)], daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{listener.getsockname()[1]}")
    t0 = time.monotonic()
    with pytest.raises(LabError, match="Could not reach the S3 endpoint") as error:
        pull("s3://lab-bucket/model.bin", tmp_path / "model.bin")
    assert time.monotonic() - t0 < 30
    assert "AWS_ENDPOINT_URL_S3" in error.value.fix
    listener.close()
