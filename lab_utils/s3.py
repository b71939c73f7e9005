"""S3 both ways with boto3's managed transfers: `pull` (the notebook) and `push` (the instructor command), verified by
size and checksum (the sha256 the lab stores in each object's metadata, else an ETag that is a plain MD5). Problems a
learner can fix are raised as `LabError`, from the library's error."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore import exceptions as bx
from botocore.config import Config
from tqdm.auto import tqdm

from .config import parse_s3_uri
from .errors import LabError, disk_error
from .files import digest, format_size, write_file

# a few threads: transfers wait on the network, and the notebook's kernel shares the CPUs
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken"}
# what to try when S3 says "no credentials" or "access denied" (a recurring question of learners outside SageMaker)
CREDENTIALS_FIX = (
    "For a public bucket such as the course's, set `LAB_S3_ANONYMOUS=true` (no credentials needed); on SageMaker, "
    "give the notebook's execution role read access to the bucket; elsewhere, set `AWS_PROFILE` (or "
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) to an account allowed to read it, and check the system clock."
)
PREFIX_FIX = (
    "Check `LAB_S3_URI` (the lab's S3 prefix) for typos (a folder URI ends with '/'), and that the instructor command "
    "published there (`python -m lab_utils instructor`)."
)


class NotFoundOnS3(LabError):
    """The object or prefix is not on the server (the bucket is)."""


def client(anonymous: bool = False):
    """A boto3 S3 client from the standard AWS configuration, with bounded timeouts (and unsigned when anonymous)."""
    # No `retries`: botocore's default is the "standard" mode (3 attempts), and a value here would override
    # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE. A silent server is reported within ~30 s (3 attempts x 8 s).
    config = Config(connect_timeout=5, read_timeout=8, signature_version=UNSIGNED if anonymous else None)
    try:  # a fresh Session: the default one caches the credentials it found first (later keys would be ignored)
        return boto3.session.Session().client("s3", config=config)
    except bx.BotoCoreError as exc:  # e.g. a profile named in AWS_PROFILE that does not exist
        raise LabError(
            f"Could not create an S3 client from your AWS configuration: {exc}",
            "Check AWS_PROFILE / AWS_DEFAULT_REGION / AWS_ENDPOINT_URL_S3 and ~/.aws/config.",
        ) from exc


def is_local(s3) -> bool:
    """A server on this machine (the lab's local S3), the only place where the lab creates a bucket."""
    return urlparse(s3.meta.endpoint_url or "").hostname in {"127.0.0.1", "localhost", "::1"}


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code"))


def _missing(s3, bucket: str) -> bool:
    """Whether the bucket is missing (a HEAD answer has no error code: a 404 is the sign)."""
    try:
        s3.head_bucket(Bucket=bucket)
    except bx.ClientError as exc:
        return _code(exc) in NOT_FOUND
    return False


def _no_bucket(s3, bucket: str, uri: str) -> LabError:
    return LabError(
        f"The bucket s3://{bucket}/ (from {uri}) does not exist at {s3.meta.endpoint_url}.",
        "Check the bucket in `LAB_S3_URI` for typos, and that AWS_ENDPOINT_URL_S3 / AWS_PROFILE point at the "
        "account or server that holds it.",
    )


def _translate(exc: BaseException, s3, uri: str, where: object) -> LabError | None:
    """The LabError for a botocore or OS error (its message inside), None for anything else (a bug)."""
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return LabError(f"No (complete) AWS credentials were found to access {uri} ({exc}).", CREDENTIALS_FIX)
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError)):
        env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fix = (
            f"AWS_ENDPOINT_URL_S3 is set to {env!r}: is that server running? Start the local one with "
            "`python -m lab_utils.backstage.local_s3`; to use real AWS, unset AWS_ENDPOINT_URL_S3."
            if env
            else "Check your network connection, then run this again. To use a local or S3-compatible server "
            "instead, set AWS_ENDPOINT_URL_S3 to its URL (`python -m lab_utils.backstage.local_s3` runs one)."
        )
        return LabError(f"Could not reach (or lost) the S3 endpoint {s3.meta.endpoint_url} for {uri}: {exc}", fix)
    if isinstance(exc, OSError):
        return disk_error(exc, where, "then run this again")
    code, bucket = _code(exc), parse_s3_uri(uri)[0]
    if code in DENIED:
        return LabError(f"Access to {uri} was denied by {s3.meta.endpoint_url}: {exc}", CREDENTIALS_FIX)
    if code in ("PreconditionFailed", "412"):  # s3transfer asks for the parts of one version (If-Match)
        return LabError(f"{uri} was replaced on the server while it was being downloaded.", "Run this again.")
    if code == "NoSuchBucket" or (code in NOT_FOUND and _missing(s3, bucket)):
        return _no_bucket(s3, bucket, uri)
    return (
        NotFoundOnS3(f"{uri} was not found at {s3.meta.endpoint_url}: {exc}", PREFIX_FIX) if code in NOT_FOUND else None
    )


@contextmanager
def _errors(s3, uri: str, where: object = ""):
    """Raise what goes wrong in the block as a LabError from the botocore/OS error (boto3's wrappers taken off)."""
    try:
        yield
    except (bx.BotoCoreError, bx.ClientError, Boto3Error, OSError) as exc:
        cause = exc
        while cause is not None and not isinstance(cause, (bx.BotoCoreError, bx.ClientError, OSError)):
            cause = getattr(cause, "last_exception", None) or cause.__cause__ or cause.__context__
        error = _translate(cause or exc, s3, uri, where or uri)
        if error is None:
            raise
        raise error from cause or exc


def _matches(path: Path, head: dict) -> bool:
    """Whether the file holds the object's bytes: its size, then the lab's sha256 or the ETag when it is an MD5."""
    if not path.is_file() or path.stat().st_size != head["ContentLength"]:
        return False
    if "sha256" in head.get("Metadata", {}):
        return digest(path) == head["Metadata"]["sha256"]
    etag, encryption = head.get("ETag", "").strip('"'), head.get("ServerSideEncryption", "")
    # a multipart upload's ETag ("...-N") or an SSE-KMS/SSE-C one is no MD5 of the bytes: the size is all we have
    if not re.fullmatch(r"[0-9a-f]{32}", etag) or "kms" in encryption or head.get("SSECustomerAlgorithm"):
        return True
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
    return md5.hexdigest() == etag


def pull(uri: str, local: str | os.PathLike, anonymous: bool = False) -> Path:
    """Download one object, or every object under a prefix ending in "/", to `local`; returns the file or folder."""
    bucket, key = parse_s3_uri(uri)
    local, s3, folder = Path(local), client(anonymous), key == "" or key.endswith("/")
    result = local / PurePosixPath(key).name if not folder and local.is_dir() else local
    with _errors(s3, uri, local):
        keys = [key]
        if folder:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            keys = [o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            if not keys:
                raise NotFoundOnS3(f"Nothing found under {uri} at {s3.meta.endpoint_url}.", PREFIX_FIX)
        todo = []
        for k in keys:
            relative = PurePosixPath(k[len(key) :])
            if relative.is_absolute() or ".." in relative.parts:  # a key must not write outside `local`
                raise LabError(f"Refusing to download s3://{bucket}/{k} outside {local}.", "Rename that key.")
            dest, head = local / relative if folder else result, s3.head_object(Bucket=bucket, Key=k)
            if not _matches(dest, head):  # a verified local copy is not downloaded again
                todo.append((k, dest, head))
    if len(todo) < len(keys):
        print(f"{uri}: {len(keys) - len(todo)} of {len(keys)} file(s) skipped (already up to date) in {result}")
    needed = sum(head["ContentLength"] for _, _, head in todo)
    probe = next(p for p in (local, *local.parents) if p.exists())  # the destination folder may not exist yet
    if needed > (free := shutil.disk_usage(probe).free):
        raise LabError(
            f"Not enough disk space for {uri}: it needs {format_size(needed)}, {probe} has {format_size(free)} free.",
            "Free some space (e.g. delete old checkpoints under data/) or choose another local folder.",
        )
    with tqdm(total=needed, unit="B", unit_scale=True, desc=f"pull {uri}", disable=not todo) as bar:
        for k, dest, head in todo:
            with _errors(s3, f"s3://{bucket}/{k}", dest), write_file(dest, mark=False) as tmp:
                s3.download_file(bucket, k, str(tmp), Config=TRANSFER, Callback=bar.update)
                if not _matches(tmp, head):
                    raise LabError(
                        f"Download of s3://{bucket}/{k} is corrupted: {tmp.stat().st_size} of {head['ContentLength']} "
                        "bytes, or bytes that do not match its checksum (sha256 metadata or MD5 ETag).",
                        "Run this again; if it keeps failing, publish it again.",
                    )
    return result


def _ensure_bucket(s3, bucket: str, uri: str) -> None:
    """The bucket exists (or may not be looked at, but written): on a local server it is created if missing."""
    with _errors(s3, uri):
        if not _missing(s3, bucket):
            return
        if not is_local(s3):  # on AWS: never (it costs money, and needs a globally unique name)
            raise _no_bucket(s3, bucket, uri)
        region = s3.meta.region_name
        where = {} if region in (None, "us-east-1") else {"LocationConstraint": region}
        s3.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": where} if where else {}))


def push(local: str | os.PathLike, uri: str) -> list[str]:
    """Upload a file, or a folder recursively under the prefix (hidden files left out); returns the keys uploaded."""
    bucket, key = parse_s3_uri(uri)
    local, s3 = Path(local), client()
    if not local.exists():
        raise LabError(f"{local} does not exist, so it cannot be uploaded to {uri}.", "Check the path.")
    if local.is_dir():
        prefix = key if key == "" or key.endswith("/") else key + "/"
        files = [f.relative_to(local) for f in sorted(local.rglob("*")) if f.is_file()]
        plan = [(local / f, prefix + f.as_posix()) for f in files if not any(p.startswith(".") for p in f.parts)]
    else:
        plan = [(local, key + local.name if key == "" or key.endswith("/") else key)]
    _ensure_bucket(s3, bucket, uri)

    def stored(f: Path, k: str, sha: str) -> bool:  # whether the object holds the file (its size and sha256)
        try:
            head = s3.head_object(Bucket=bucket, Key=k)
        except bx.ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return False
            raise
        return head["ContentLength"] == f.stat().st_size and head.get("Metadata", {}).get("sha256") == sha

    todo = []
    for f, k in plan:
        with _errors(s3, f"s3://{bucket}/{k}", f):
            if not stored(f, k, sha := digest(f)):
                todo.append((f, k, sha))
    if len(todo) < len(plan):
        print(f"{uri}: {len(plan) - len(todo)} of {len(plan)} file(s) skipped (already uploaded)")
    total = sum(f.stat().st_size for f, _, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"push {uri}", disable=not todo) as bar:
        for f, k, sha in todo:
            with _errors(s3, f"s3://{bucket}/{k}", f):
                extra = {"Metadata": {"sha256": sha}}
                s3.upload_file(str(f), bucket, k, ExtraArgs=extra, Config=TRANSFER, Callback=bar.update)
                if not stored(f, k, sha):  # what the server stored, not what we think we sent
                    raise LabError(
                        f"Upload of {f} to s3://{bucket}/{k} could not be verified: the server's size or sha256 differ",
                        "Run this again; if it keeps failing, check the S3 endpoint and that nothing else writes to "
                        "that key or to the local file meanwhile.",
                    )
    return [k for _, k, _ in todo]


def upload_folder(settings, folder: Path, names) -> None:
    """Upload `names` of a finished run (or of the offline release) to `LAB_S3_URI`, skipping what S3 already has."""
    for name in names:
        push(folder / name, settings.s3(name + "/" if (folder / name).is_dir() else name))
    print(f"Published {folder} to {settings.s3_uri}")


def check_publish_target(settings) -> None:
    """Before any training: `LAB_S3_URI`'s bucket answers (or, on a local server, can be made) and may be written."""
    _ensure_bucket(client(), parse_s3_uri(settings.s3_uri)[0], settings.s3_uri)
