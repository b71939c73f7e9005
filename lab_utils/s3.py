"""S3 both ways with boto3's managed transfers, checked by size and checksum: `pull` (notebook), `push` (instructor)."""

# The checksum: the sha256 the lab stores in each object's metadata, else an ETag that is a plain MD5. Problems a
# learner can fix are raised as `LabError`, from the library's error.
from __future__ import annotations

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
from .files import check_output, digest, format_size, write_file

# a few threads: transfers wait on the network, and the notebook's kernel shares the CPUs
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken"}
# what to try when S3 says "no credentials" or "access denied" (a recurring question of learners outside SageMaker)
CREDENTIALS_FIX = ("For a public bucket (the course's), set `LAB_S3_ANONYMOUS=true`; on SageMaker, give the notebook's "
                   "role read access to it; elsewhere, set `AWS_PROFILE` (or AWS_ACCESS_KEY_ID / "
                   "AWS_SECRET_ACCESS_KEY) and check the clock.")  # fmt: skip
PREFIX_FIX = "Check `LAB_S3_URI` for typos (a folder ends with '/'), and that the instructor command published there."
# when the endpoint does not answer: AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) may name a local server that is down
REACH_FIX = ("Check your network connection and run this again. If AWS_ENDPOINT_URL_S3 names a local server, is it "
             "running? (`python -m lab_utils.backstage.local_s3` runs the lab's; unset it to use AWS.)")  # fmt: skip


class NotFoundOnS3(LabError): ...  # the object or prefix is not on the server (the bucket is)


def client(anonymous: bool = False):
    # A boto3 S3 client from the standard AWS configuration, with bounded timeouts (and unsigned when anonymous).
    # No `retries`: botocore's default is the "standard" mode (3 attempts), and a value here would override
    # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE. A silent server is reported within ~30 s (3 attempts x 8 s).
    config = Config(connect_timeout=5, read_timeout=8, signature_version=UNSIGNED if anonymous else None)
    try:  # a fresh Session: the default one caches the credentials it found first (later keys would be ignored)
        return boto3.session.Session().client("s3", config=config)
    except bx.BotoCoreError as exc:  # e.g. a profile named in AWS_PROFILE that does not exist
        fix = "Check AWS_PROFILE / AWS_DEFAULT_REGION / AWS_ENDPOINT_URL_S3 and ~/.aws/config."
        raise LabError(f"Could not create an S3 client from your AWS configuration: {exc}", fix) from exc


def is_local(s3) -> bool:
    # A server on this machine (the lab's local S3), the only place where the lab creates a bucket.
    return urlparse(s3.meta.endpoint_url or "").hostname in {"127.0.0.1", "localhost", "::1"}


def _code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code"))


def _no_bucket(s3, uri: str) -> LabError | None:
    # The LabError that says that the URI's bucket is missing; None when it is there (or may not be looked at).
    try:  # a HEAD answer has no error code: its 404 is the sign
        s3.head_bucket(Bucket=parse_s3_uri(uri)[0])
    except bx.ClientError as exc:
        if _code(exc) in NOT_FOUND:
            fix = "Check the bucket in `LAB_S3_URI` for typos, and that AWS_ENDPOINT_URL_S3 / AWS_PROFILE lead to it."
            return LabError(f"The bucket of {uri} does not exist at {s3.meta.endpoint_url}.", fix)


@contextmanager
def _errors(s3, uri: str, where: object = ""):
    # Raise a botocore or OS error of the block (out of boto3's wrappers) as the LabError that says what to do.
    try:
        yield
    except (bx.BotoCoreError, bx.ClientError, Boto3Error, OSError) as exc:
        cause = (getattr(exc, "last_exception", None) or exc.__context__ or exc) if isinstance(exc, Boto3Error) else exc
        code, endpoint, error = _code(cause), s3.meta.endpoint_url, None
        if isinstance(cause, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            error = LabError(f"No (complete) AWS credentials were found to access {uri} ({cause}).", CREDENTIALS_FIX)
        elif isinstance(cause, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError)):
            error = LabError(f"Could not reach (or lost) the S3 endpoint {endpoint} for {uri}: {cause}", REACH_FIX)
        elif isinstance(cause, OSError):
            error = disk_error(cause, where or uri, "then run this again")
        elif code in DENIED:
            error = LabError(f"Access to {uri} was denied by {endpoint}: {cause}", CREDENTIALS_FIX)
        elif code in ("PreconditionFailed", "412"):  # s3transfer asks for the parts of one version (If-Match)
            error = LabError(f"{uri} was replaced on the server while it was being downloaded.", "Run this again.")
        elif code in NOT_FOUND:
            error = _no_bucket(s3, uri) or NotFoundOnS3(f"{uri} was not found at {endpoint}: {cause}", PREFIX_FIX)
        if error is None:  # not one a learner can fix: a bug
            raise
        raise error from cause


def _matches(path: Path, head: dict) -> bool:
    # Whether the file holds the object's bytes: its size, then the lab's sha256 or the ETag when it is an MD5.
    if not path.is_file() or path.stat().st_size != head["ContentLength"]:
        return False
    sha, etag = head.get("Metadata", {}).get("sha256"), head.get("ETag", "").strip('"')
    # a multipart upload's ETag ("...-N") or an SSE-KMS one is no MD5 of the bytes: the size is all we have (SSE-C
    # objects, whose ETag is no MD5 either, cannot be read without their key, which the lab never has)
    if not sha and ("kms" in head.get("ServerSideEncryption", "") or not re.fullmatch(r"[0-9a-f]{32}", etag)):
        return True
    return digest(path, "sha256" if sha else "md5") == (sha or etag)


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
        if bad := [k for k in keys if ".." in PurePosixPath(k[len(key) :]).parts or k[len(key) :].startswith("/")]:
            raise LabError(f"Refusing to download s3://{bucket}/{bad[0]} outside {local}.", "Rename that key.")
        jobs = [(k, result / k[len(key) :], s3.head_object(Bucket=bucket, Key=k)) for k in keys]
        todo = [(k, dest, head) for k, dest, head in jobs if not _matches(dest, head)]  # verified copies are kept
    if len(todo) < len(keys):
        print(f"{uri}: {len(keys) - len(todo)} of {len(keys)} file(s) skipped (already up to date) in {result}")
    for _, dest, _ in todo:  # before any download: a file the user put there, or changed, stays as it is
        check_output(dest, f"the download of {uri} to")
    probe = next(p for p in (local, *local.parents) if p.exists())  # the destination folder may not exist yet
    if (needed := sum(head["ContentLength"] for *_, head in todo)) > (free := shutil.disk_usage(probe).free):
        fix = "Free some space (e.g. delete old checkpoints under data/) or choose another local folder."
        raise LabError(f"Not enough disk space in {probe}: {format_size(needed)} needed, {format_size(free)} free", fix)
    with tqdm(total=needed, unit="B", unit_scale=True, desc=f"pull {PurePosixPath(uri).name}", disable=not todo) as bar:
        for k, dest, head in todo:
            with _errors(s3, f"s3://{bucket}/{k}", dest), write_file(dest) as tmp:
                s3.download_file(bucket, k, str(tmp), Config=TRANSFER, Callback=bar.update)
                if not _matches(tmp, head):
                    fix = "Run this again; if it keeps failing, publish it again."
                    raise LabError(f"Download of s3://{bucket}/{k} is corrupted: its size or checksum differ.", fix)
    return result


def _ensure_bucket(s3, uri: str) -> None:
    # The bucket exists (or may not be looked at, but written): on a local server it is created if missing.
    with _errors(s3, uri):
        if missing := _no_bucket(s3, uri):
            if not is_local(s3):  # on AWS: never (it costs money, and needs a globally unique name)
                raise missing
            where = {"CreateBucketConfiguration": {"LocationConstraint": s3.meta.region_name}}
            s3.create_bucket(Bucket=parse_s3_uri(uri)[0], **(where if s3.meta.region_name != "us-east-1" else {}))


def push(local: str | os.PathLike, uri: str) -> list[str]:
    """Upload a file, or a folder recursively under the prefix (hidden files left out); returns the keys uploaded."""
    bucket, key = parse_s3_uri(uri)
    local, s3, folder = Path(local), client(), key == "" or key.endswith("/")
    plan = [(local, key + local.name if folder else key)]
    if local.is_dir():
        files = [f.relative_to(local) for f in sorted(local.rglob("*")) if f.is_file()]
        base = key if folder else key + "/"
        plan = [(local / f, base + f.as_posix()) for f in files if not any(p.startswith(".") for p in f.parts)]
    _ensure_bucket(s3, uri)

    def stored(f: Path, k: str, sha: str) -> bool:  # whether the object holds the file (its size and sha256)
        try:
            head = s3.head_object(Bucket=bucket, Key=k)
        except bx.ClientError as exc:
            if _code(exc) in NOT_FOUND:
                return False
            raise
        return head["ContentLength"] == f.stat().st_size and head.get("Metadata", {}).get("sha256") == sha

    with _errors(s3, uri, local):
        todo = [(f, k, sha) for f, k in plan if not stored(f, k, sha := digest(f))]
    if len(todo) < len(plan):
        print(f"{uri}: {len(plan) - len(todo)} of {len(plan)} file(s) skipped (already uploaded)")
    total = sum(f.stat().st_size for f, *_ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"push {PurePosixPath(uri).name}", disable=not todo) as bar:
        for f, k, sha in todo:
            with _errors(s3, f"s3://{bucket}/{k}", f):
                extra = {"Metadata": {"sha256": sha}}  # what `stored` and a later pull check
                s3.upload_file(str(f), bucket, k, ExtraArgs=extra, Config=TRANSFER, Callback=bar.update)
                if not stored(f, k, sha):  # what the server stored, not what we think we sent
                    fix = "Run this again; if it keeps failing, check that nothing else writes to the file or the key."
                    raise LabError(f"Upload of {f} to s3://{bucket}/{k} could not be verified (size or sha256).", fix)
    return [k for _, k, _ in todo]


def upload_folder(settings, folder: Path, names) -> None:
    """Upload `names` of a finished run (or of the offline release) to `LAB_S3_URI`, skipping what S3 already has."""
    for name in names:
        push(folder / name, settings.s3(name + "/" if (folder / name).is_dir() else name))
    print(f"Published {folder} to {settings.s3_uri}")


def check_publish_target(settings) -> None:
    """Before any training: `LAB_S3_URI`'s bucket answers (or, on a local server, can be made) and may be written."""
    _ensure_bucket(client(), settings.s3_uri)
