"""Publishing to S3 (the instructor command): verified uploads that skip what the server already has."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError
from tqdm.auto import tqdm

from ..config import parse_s3_uri
from ..errors import LabError
from ..s3 import (
    NOT_FOUND_CODES,
    TRANSFER_CONFIG,
    bucket_exists,
    etag_matches,
    friendly_errors,
    is_local,
    no_bucket_error,
    s3_client,
    up_to_date,
)

if TYPE_CHECKING:
    from botocore.client import BaseClient


def upload_folder(settings, folder: Path, names) -> None:
    """Upload `names` of a finished run (or of the offline release) to `LAB_S3_URI`, skipping what S3 already has."""
    for name in names:
        path = folder / name
        push_checkpoint(path, settings.s3(name + "/" if path.is_dir() else name))
    print(f"Published {folder} to {settings.s3_uri}")


def _ensure_bucket(client, bucket: str, uri: str) -> None:
    with friendly_errors(client, uri):
        exists = bucket_exists(client, bucket)
        if exists is not False:
            return  # exists, or we may not HEAD it but still be allowed to write: let the upload tell
        if not is_local(client):
            # Creating buckets on real AWS costs money and needs a globally unique name: never do it here.
            raise no_bucket_error(client, bucket, uri)
        region = client.meta.region_name
        if region and region != "us-east-1":
            client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        else:
            client.create_bucket(Bucket=bucket)


def _head_or_none(client, bucket: str, key: str) -> dict | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if str(e.response.get("Error", {}).get("Code")) in NOT_FOUND_CODES:
            return None
        raise


def push_checkpoint(local_path: str | os.PathLike, s3_uri: str, client: BaseClient | None = None) -> list[str]:
    """Upload a file, or a folder recursively under the prefix; returns the keys uploaded."""
    bucket, key = parse_s3_uri(s3_uri)
    local = Path(local_path)
    if not local.exists():
        raise LabError(
            f"{local} does not exist, so it cannot be uploaded to {s3_uri}.",
            "Check the path (did the training / saving step finish?).",
        )
    client = client or s3_client()

    if local.is_dir():
        prefix = key if key == "" or key.endswith("/") else key + "/"
        files = sorted(
            f
            for f in local.rglob("*")
            if f.is_file()
            and not f.name.endswith((".part", ".part.etag"))  # interrupted downloads
            and ".ipynb_checkpoints" not in f.parts
        )
        plan = [(f, prefix + f.relative_to(local).as_posix()) for f in files]
    else:
        plan = [(local, key + local.name if key == "" or key.endswith("/") else key)]

    _ensure_bucket(client, bucket, s3_uri)

    todo = []
    for f, k in plan:
        uri = f"s3://{bucket}/{k}"
        with friendly_errors(client, uri):
            head = _head_or_none(client, bucket, k)
            if head is not None and up_to_date(client, bucket, k, head, f):
                continue
        todo.append((f, k))
    if len(todo) < len(plan):
        print(f"{s3_uri}: {len(plan) - len(todo)} of {len(plan)} file(s) skipped (already uploaded)")

    uploaded = []
    with tqdm(
        total=sum(f.stat().st_size for f, _ in todo),
        unit="B",
        unit_scale=True,
        desc=f"push {s3_uri}",
        disable=not todo,
    ) as bar:
        for f, k in todo:
            uri = f"s3://{bucket}/{k}"
            with friendly_errors(client, uri, local=f):
                client.upload_file(str(f), bucket, k, Config=TRANSFER_CONFIG, Callback=bar.update)
                head = client.head_object(Bucket=bucket, Key=k)
                # Verify what the server stored, not what we think we sent.
                local_size = f.stat().st_size
                if head["ContentLength"] != local_size:
                    problem = f"the server has {head['ContentLength']} bytes, the local file {local_size}"
                elif etag_matches(client, bucket, k, head, f) is False:
                    problem = f"its MD5 does not match the server's ETag {head.get('ETag')}"
                else:
                    problem = None
            if problem:
                raise LabError(
                    f"Upload of {f} to {uri} could not be verified: {problem}.",
                    "Run this cell again to upload it again; if it keeps failing, check the S3 endpoint and that "
                    "nothing else writes to that key or to the local file meanwhile.",
                )
            uploaded.append(k)
    return uploaded


def check_publish_target(settings) -> None:
    """Before any training: `LAB_S3_URI`'s bucket answers (or, on a local server, can be made) and may be written."""
    bucket, _ = parse_s3_uri(settings.s3_uri)
    client = s3_client()
    _ensure_bucket(client, bucket, settings.s3_uri)
