"""The S3 engine (pulls here; `backstage/publish` pushes): resumable, verified, no partial file under a final name.

Every download lands in a `<name>.part` file first and is renamed only after its size and
(where S3 gives us one) its MD5 have been checked, so an interrupted or corrupted transfer
never looks like a finished checkpoint. Problems a learner can fix are raised as `LabError`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError
from tqdm.auto import tqdm
from urllib3.exceptions import ProtocolError

from .config import parse_s3_uri
from .errors import LabError, disk_error

if TYPE_CHECKING:
    from botocore.client import BaseClient

# Multipart size used for our own uploads; also the first guess when re-computing a
# multipart ETag (it is MD5 of the part MD5s, so it depends on the part size).
CHUNK_SIZE = 8 * 1024 * 1024
# A few threads: transfers wait on the network, and the notebook's kernel shares the CPUs (8 vCPUs on ml.m5.2xlarge).
TRANSFER_CONFIG = TransferConfig(multipart_threshold=CHUNK_SIZE, multipart_chunksize=CHUNK_SIZE, max_concurrency=4)

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
}
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
# what to try when S3 says "no credentials" or "access denied" (a recurring question of learners outside SageMaker)
CREDENTIALS_FIX = (
    "For a public bucket such as the course's, set `LAB_S3_ANONYMOUS=true` (no credentials needed); on SageMaker, "
    "give the notebook's execution role read access to the bucket; elsewhere, set `AWS_PROFILE` (or "
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) to an account allowed to read it, and check the system clock."
)
_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


# ---------------------------------------------------------------------------------------------
# small public helpers


def format_size(n: int) -> str:
    """Human-readable decimal size, e.g. 945_000_000 -> "945.0 MB" (the units the course uses)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def s3_client(anonymous: bool = False):
    """A boto3 S3 client from the standard AWS configuration, with bounded retries and timeouts."""
    # Respect AWS_MAX_ATTEMPTS / AWS_RETRY_MODE if the user set them: a Config value would
    # otherwise silently override the standard configuration.
    retries = {
        "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
        "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "3")),
    }
    # a server that accepts the connection but never answers is reported within ~30 s (3 attempts x 8 s), not minutes
    kwargs = {"retries": retries, "connect_timeout": 5, "read_timeout": 8}
    if anonymous:
        kwargs["signature_version"] = UNSIGNED  # public buckets: no credentials needed
    # No request/response checksum override: botocore's default CRC32 checksums work with
    # moto 5.2 (checked), so we keep the extra integrity check they give.
    try:
        # A fresh Session each time: boto3.client() reuses a default session that caches the
        # credentials it found first, so keys set later in the notebook would be ignored.
        return boto3.session.Session().client("s3", config=Config(**kwargs))
    except Exception as e:  # e.g. a profile named in AWS_PROFILE that does not exist
        raise LabError(
            f"Could not create an S3 client from your AWS configuration: {e}",
            "Check AWS_PROFILE / AWS_DEFAULT_REGION / AWS_ENDPOINT_URL_S3 and ~/.aws/config.",
        ) from e


# ---------------------------------------------------------------------------------------------
# error translation


def endpoint(client) -> str:
    return getattr(client.meta, "endpoint_url", None) or "(default AWS endpoint)"


def is_local(client) -> bool:
    host = urlparse(endpoint(client)).hostname or ""
    return host in _LOCAL_HOSTS


def _botocore_cause(exc: BaseException) -> BaseException:
    """boto3's upload_file wraps ClientError in S3UploadFailedError; find the real error."""
    seen = exc
    while seen is not None:
        if isinstance(
            seen,
            (ClientError, NoCredentialsError, PartialCredentialsError, *_UNREACHABLE),
        ):
            return seen
        if disk_error(seen, "") is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _unreachable_error(client, uri: str, exc: BaseException) -> LabError:
    ep = endpoint(client)
    env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if env:
        fix = (
            f"AWS_ENDPOINT_URL_S3 is set to {env!r}: is that server running? For the local "
            "test server run lab_utils.backstage.local_s3.start_local_s3(); to use real AWS, unset AWS_ENDPOINT_URL_S3."
        )
    else:
        fix = (
            "Check your network connection. To use a local or S3-compatible server instead of AWS, "
            "set AWS_ENDPOINT_URL_S3 to its URL (e.g. run lab_utils.backstage.local_s3.start_local_s3())."
        )
    return LabError(
        f"Could not reach the S3 endpoint {ep} for {uri} ({type(exc).__name__}, after retries).",
        fix,
    )


def bucket_exists(client, bucket: str) -> bool | None:
    """True/False if we can tell whether the bucket exists, None if we cannot (e.g. no permission)."""
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        return None


def no_bucket_error(client, bucket: str, uri: str) -> LabError:
    return LabError(
        f"The bucket s3://{bucket}/ (from {uri}) does not exist at {endpoint(client)}.",
        "Check the bucket in `LAB_S3_URI` for typos, and that AWS_ENDPOINT_URL_S3 / AWS_PROFILE point at the "
        "account or server that holds it.",
    )


def _translate(exc: BaseException, client, uri: str, *, local: Path | None = None) -> BaseException:
    """Turn a boto3/OS error into a LabError with a fix, or return it unchanged if it is a bug."""
    exc = _botocore_cause(exc)
    if isinstance(exc, LabError):
        return exc
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return LabError(f"No (complete) AWS credentials were found to access {uri}.", CREDENTIALS_FIX)
    if isinstance(exc, _UNREACHABLE):
        return _unreachable_error(client, uri, exc)
    disk = disk_error(exc, f"{local or Path('.')} (from {uri})", "then run this cell again")
    if disk is not None:
        return disk
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code"))
        if code in _DENIED_CODES:
            return LabError(f"Access to {uri} was denied by {endpoint(client)} ({code}).", CREDENTIALS_FIX)
        if code == "NoSuchBucket":
            return no_bucket_error(client, parse_s3_uri(uri)[0], uri)
        if code in NOT_FOUND_CODES:
            bucket = parse_s3_uri(uri)[0]
            if bucket_exists(client, bucket) is False:  # HEAD answers carry no error code
                return no_bucket_error(client, bucket, uri)
            return NotFoundOnS3(
                f"{uri} was not found at {endpoint(client)}.",
                "Check `LAB_S3_URI` (the lab's S3 prefix) for typos (a folder URI ends with '/'), and that the "
                "instructor command published there (`python -m lab_utils instructor`).",
            )
    return exc


@contextmanager
def friendly_errors(client, uri: str, local: Path | None = None) -> Iterator[None]:
    try:
        yield
    except LabError:
        raise
    except Exception as e:
        new = _translate(e, client, uri, local=local)
        if new is e:
            raise
        raise new from e


# ---------------------------------------------------------------------------------------------
# integrity checks


def _file_md5s(path: Path, part_size: int | None) -> str:
    """MD5 hex of the file, or the S3 multipart ETag ("md5-of-md5s-N") for the given part size."""
    whole, parts, n = hashlib.md5(), [], 0
    with open(path, "rb") as f:
        while True:
            block = f.read(part_size or 1024 * 1024)
            if not block:
                break
            n += 1
            if part_size:
                parts.append(hashlib.md5(block).digest())
            else:
                whole.update(block)
    if not part_size:
        return whole.hexdigest()
    if n == 0:
        parts.append(hashlib.md5(b"").digest())
        n = 1
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{n}"


def etag_matches(client, bucket: str, key: str, head: dict, path: Path) -> bool | None:
    """Does the local file match the object's ETag? None when the ETag is not an MD5 we can recompute."""
    etag = head.get("ETag", "").strip('"')
    # With SSE-KMS / SSE-C the ETag is not an MD5 of the data: only the size can be checked.
    if head.get("ServerSideEncryption", "").startswith("aws:kms") or head.get("SSECustomerAlgorithm"):
        return None
    if "-" not in etag:
        return _file_md5s(path, None) == etag if len(etag) == 32 else None
    # Multipart: the ETag depends on the part size; asking for part 1 tells us that size.
    try:
        part_size = client.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"]
    except ClientError:
        part_size = CHUNK_SIZE  # servers without PartNumber support: assume our own chunking
    if not part_size:
        return None
    return _file_md5s(path, part_size) == etag


def up_to_date(client, bucket: str, key: str, head: dict, path: Path) -> bool:
    if not path.is_file() or path.stat().st_size != head["ContentLength"]:
        return False
    return etag_matches(client, bucket, key, head, path) is not False


# ---------------------------------------------------------------------------------------------
# pull

# Retries of an interrupted download (each one resumes from the bytes already on disk). Module
# constants so tests (and impatient instructors) can change them.
DOWNLOAD_RETRIES = 4
RETRY_BACKOFF_S = 1.0  # first wait; doubles after each failed try, up to RETRY_BACKOFF_MAX_S
RETRY_BACKOFF_MAX_S = 15.0
STREAM_CHUNK = 1024 * 1024  # read size of a resumed (ranged) download

_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETRESET,
}
_TRANSIENT_TYPES = (
    *_UNREACHABLE,
    IncompleteReadError,
    ResponseStreamingError,
    RetriesExceededError,
    http.client.HTTPException,  # includes http.client.IncompleteRead
    ProtocolError,
    TimeoutError,
    ConnectionError,
)
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


def _is_transient(exc: BaseException) -> bool:
    """A network hiccup worth retrying (connection reset, server gone, short body, timeout, 5xx)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return False
        if isinstance(seen, _TRANSIENT_TYPES):
            return True
        if isinstance(seen, OSError) and seen.errno in _TRANSIENT_ERRNOS:
            return True
        if isinstance(seen, ClientError) and str(seen.response.get("Error", {}).get("Code")) in _TRANSIENT_CODES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _part_paths(dest: Path) -> tuple[Path, Path]:
    """The partial download and its sidecar holding the ETag the partial download started from."""
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.etag")


def _resumable_bytes(dest: Path, head: dict) -> int:
    """How many bytes of an earlier, interrupted download of this same object version can be kept."""
    tmp, tag = _part_paths(dest)
    etag = head.get("ETag", "")
    try:
        if not etag or not tmp.is_file() or tag.read_text().strip() != etag:
            return 0
        n = tmp.stat().st_size
    except OSError:
        return 0
    return n if n <= head["ContentLength"] else 0


class _PrefixTrackingFile:
    """A file wrapper for download_fileobj that records which byte ranges have been written.

    s3transfer writes the parts of a big object in whatever order they arrive (seek + write), and
    re-writes a range it retries. After a failure, `prefix()` is the length that is complete from
    byte 0: the .part is cut back to it, so a partial file is always a prefix of the object.
    """

    def __init__(self, f):
        self._f = f
        self._ranges: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def write(self, data) -> int:
        with self._lock:
            start = self._f.tell()
            n = self._f.write(data)
            self._ranges.append((start, start + n))
        return n

    def prefix(self) -> int:
        end = 0
        with self._lock:
            for a, b in sorted(self._ranges):
                if a > end:
                    break
                end = max(end, b)
        return end


class NotFoundOnS3(LabError):
    """The object or prefix is not on the server (the bucket is)."""


class DownloadInterrupted(LabError):
    """A download failed on network errors even after retries; its .part is kept so the next run resumes."""


def _set_progress(bar, n: int) -> None:
    bar.n = n
    bar.refresh()


def _check_free_space(dest_dir: Path, needed: int, uri: str) -> None:
    probe = dest_dir
    while not probe.exists():  # the destination folder may not exist yet
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise LabError(
            f"Not enough disk space for {uri}: it needs {format_size(needed)}, {probe} has {format_size(free)} free.",
            "Free some space (e.g. delete old checkpoints under data/) or choose another local_path.",
        )


def _get_range(client, bucket: str, key: str, head: dict, tmp: Path, offset: int, bar) -> None:
    """Append bytes offset.. of the object to tmp with a ranged GET (only if the ETag is unchanged)."""
    extra = {"IfMatch": head["ETag"]} if head.get("ETag") else {}
    resp = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-", **extra)
    with open(tmp, "ab") as f:
        if not str(resp.get("ContentRange", "")).startswith(f"bytes {offset}-"):
            f.truncate(0)  # the server ignored the Range: it sends the whole object
            bar.update(-offset)
        for chunk in resp["Body"].iter_chunks(STREAM_CHUNK):
            f.write(chunk)
            bar.update(len(chunk))


def _fetch(client, bucket: str, key: str, head: dict, tmp: Path, bar, uri: str) -> None:
    """Fill tmp with the object, retrying transient errors with backoff and resuming each time."""
    size = head["ContentLength"]
    base = bar.n - tmp.stat().st_size  # bar position of this file's first byte
    retries = 0
    while True:
        offset = tmp.stat().st_size
        if offset >= size:
            return
        try:
            if offset == 0:
                # download_fileobj: parallel ranged GETs for big objects, and its own retries.
                with open(tmp, "wb") as f:
                    tracked = _PrefixTrackingFile(f)
                    try:
                        client.download_fileobj(bucket, key, tracked, Config=TRANSFER_CONFIG, Callback=bar.update)
                    except BaseException:
                        f.truncate(tracked.prefix())  # drop bytes after the first hole
                        raise
            else:
                _get_range(client, bucket, key, head, tmp, offset, bar)
            return
        except (ClientError, S3DownloadFailedError) as e:
            # If-Match failed (ours on a resume, s3transfer's on the parts of a big object).
            code = str(e.response.get("Error", {}).get("Code")) if isinstance(e, ClientError) else ""
            if code in ("PreconditionFailed", "412") or "did not match expected ETag" in str(e):
                raise LabError(
                    f"{uri} was replaced on the server while it was being downloaded.",
                    "Run this cell again to download the new version.",
                ) from e
            if not _is_transient(e):
                raise
            error: BaseException = e
        except Exception as e:
            if not _is_transient(e):
                raise
            error = e
        got = tmp.stat().st_size
        _set_progress(bar, base + got)
        if retries >= DOWNLOAD_RETRIES:
            error = getattr(error, "last_exception", None) or error  # s3transfer's RetriesExceededError
            fix = f"Run this cell again: it resumes from the partial file {tmp.name}."
            if isinstance(_botocore_cause(error), _UNREACHABLE):
                fix += " " + _unreachable_error(client, uri, error).fix
            else:
                fix += " If it keeps failing, check your network connection and the S3 endpoint."
            raise DownloadInterrupted(
                f"The download of {uri} was interrupted after {format_size(got)} of {format_size(size)} "
                f"({type(error).__name__}: {error}), even after {retries} retries.",
                fix,
            ) from error
        time.sleep(min(RETRY_BACKOFF_S * 2**retries, RETRY_BACKOFF_MAX_S))
        retries += 1


def _verify(client, bucket: str, key: str, head: dict, tmp: Path, uri: str) -> None:
    size, got = head["ContentLength"], tmp.stat().st_size
    if got != size:
        raise LabError(
            f"Download of {uri} is incomplete: got {got} of {size} bytes.",
            "Run this cell again; if it keeps failing, check the network or the S3 endpoint.",
        )
    if etag_matches(client, bucket, key, head, tmp) is False:
        raise LabError(
            f"Download of {uri} is corrupted: its MD5 does not match the ETag {head['ETag']}.",
            "Run this cell again; if it keeps failing, upload the checkpoint again.",
        )


def _download_one(client, bucket: str, key: str, head: dict, dest: Path, bar, uri: str) -> None:
    """Download to `<dest>.part` (resuming an interrupted one), verify, then rename to `dest`."""
    tmp, tag = _part_paths(dest)
    with friendly_errors(client, uri, local=dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
    keep_part = False
    try:
        offset = _resumable_bytes(dest, head)
        if offset:
            print(f"resuming {dest} from {format_size(offset)} of {format_size(head['ContentLength'])}")
            bar.update(offset)
        else:  # nothing usable: (re)start from zero, remembering which object version this is
            with friendly_errors(client, uri, local=dest):
                tmp.write_bytes(b"")
                tag.write_text(head.get("ETag", ""))
        for attempt in ("resume", "restart"):
            try:
                with friendly_errors(client, uri, local=dest):
                    _fetch(client, bucket, key, head, tmp, bar, uri)
            except DownloadInterrupted:
                keep_part = True
                raise
            try:
                _verify(client, bucket, key, head, tmp, uri)
                break
            except LabError:
                if not offset or attempt == "restart":
                    raise
                # The kept partial file was bad after all: start once more from zero.
                bar.update(-tmp.stat().st_size)
                tmp.write_bytes(b"")
                offset = 0
        os.replace(tmp, dest)  # atomic: `dest` is either the old file or the complete new one
        tag.unlink(missing_ok=True)
    except KeyboardInterrupt:
        keep_part = True  # what is on disk is a valid prefix (or the whole, unverified file): resume it
        raise
    finally:
        if not keep_part:
            tmp.unlink(missing_ok=True)  # never leave a half-written checkpoint around
            tag.unlink(missing_ok=True)


def pull(s3_uri: str, local_path: str | os.PathLike, client: BaseClient | None = None, anonymous: bool = False) -> Path:
    """Download one object, or every object under a prefix ending in "/", to `local_path`."""
    bucket, key = parse_s3_uri(s3_uri)
    client = client or s3_client(anonymous=anonymous)
    local = Path(local_path)
    is_folder = key == "" or key.endswith("/")

    jobs: list[tuple[str, Path, dict]] = []  # (key, destination, head_object answer)
    with friendly_errors(client, s3_uri, local=local):
        if is_folder:
            keys = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            if not keys:
                raise NotFoundOnS3(
                    f"Nothing found under {s3_uri} at {endpoint(client)}.",
                    "Check `LAB_S3_URI` (the lab's S3 prefix) for typos, and that the instructor command published "
                    "there (`python -m lab_utils instructor`).",
                )
            for k in keys:
                rel = Path(k[len(key) :])
                if rel.is_absolute() or ".." in rel.parts:  # a key must not write outside local_path
                    raise LabError(
                        f"Refusing to download s3://{bucket}/{k} outside {local}.",
                        "Rename that key.",
                    )
                jobs.append((k, local / rel, client.head_object(Bucket=bucket, Key=k)))
            result = local
        else:
            dest = local / Path(key).name if local.is_dir() else local
            jobs.append((key, dest, client.head_object(Bucket=bucket, Key=key)))
            result = dest

    todo = []
    for k, dest, head in jobs:
        with friendly_errors(client, f"s3://{bucket}/{k}", local=dest):
            fresh = up_to_date(client, bucket, k, head, dest)
        if not fresh:  # a verified local copy is not downloaded again
            todo.append((k, dest, head))
    if len(todo) < len(jobs):
        print(f"{s3_uri}: {len(jobs) - len(todo)} of {len(jobs)} file(s) skipped (already up to date) in {result}")
    if not todo:
        return result

    total = sum(h["ContentLength"] for _, _, h in todo)
    kept = sum(_resumable_bytes(dest, h) for _, dest, h in todo)  # parts of interrupted downloads
    _check_free_space(local if is_folder else result.parent, total - kept, s3_uri)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"pull {s3_uri}") as bar:
        for k, dest, head in todo:
            _download_one(client, bucket, k, head, dest, bar, f"s3://{bucket}/{k}")
    return result
