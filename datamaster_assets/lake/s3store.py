"""The ObjectStore protocol on an S3 bucket (the ``aws`` environment).

boto3 resolves the endpoint itself (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for moto or a
VPC endpoint) and credentials from the standard chain, so nothing here names either.
Writes are atomic by S3's own semantics: a single PUT, or a multipart upload that only becomes
visible when it is completed, so a reader sees the whole object or nothing.
"""

from __future__ import annotations

from datetime import timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from datamaster_assets.lake.objectstore import ObjectInfo, _check_key, sha256_stream

# S3 never returns more than 1,000 keys per list_objects_v2 page.
S3_MAX_PAGE = 1000
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
# Files above this size go up as a multipart upload (parallel parts, still one atomic object).
_TRANSFER = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _existing_key(key: str) -> str:
    """A key to read: any non-empty S3 key. Producers may write keys that ``_check_key`` (the rule
    for keys this project creates, and for local paths) refuses, such as ``raw/t//x.csv.gz``;
    S3 stores them as they are, so they must stay readable."""
    if not key:
        raise ValueError("empty object key")
    return key


def _etag(raw: str) -> str:
    return raw.strip('"')


class S3ObjectStore:
    """Objects as keys of one S3 bucket."""

    def __init__(self, bucket: str, region: str | None = None, client: Any | None = None):
        if not bucket:
            raise ValueError("S3ObjectStore needs a bucket name")
        self.bucket = bucket
        self.region = region
        self.client = client if client is not None else boto3.client("s3", region_name=region)

    # boto3 clients do not pickle; a copy in another process builds its own from the environment.
    def __getstate__(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "region": self.region}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["bucket"], state["region"])

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r})"

    def _missing(self, key: str, exc: ClientError) -> FileNotFoundError:
        return FileNotFoundError(f"s3://{self.bucket}/{key}: no such object ({_error_code(exc)})")

    # ---- writes ------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        _check_key(key)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return self._head_required(key)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        _check_key(key)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        self.client.upload_file(str(path), self.bucket, key, Config=_TRANSFER)
        return self._head_required(key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=_check_key(key))

    # ---- reads -------------------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        """The object's body as a streaming reader (botocore StreamingBody, an io.IOBase)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=_existing_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise self._missing(key, exc) from exc
            raise
        return response["Body"]

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as body:
            return body.read()

    def sha256(self, key: str) -> str:
        with self.open_read(key) as body:
            return sha256_stream(body)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=_existing_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise
        return ObjectInfo(key, int(response["ContentLength"]), _etag(response["ETag"]), response["LastModified"])

    def _head_required(self, key: str) -> ObjectInfo:
        info = self.head(key)
        if info is None:  # only if someone deleted it between our PUT and HEAD
            raise FileNotFoundError(f"s3://{self.bucket}/{key}: vanished right after it was written")
        return info

    # ---- listing -----------------------------------------------------------------------
    def list_after(self, prefix: str, start_after: str | None = None, limit: int = 1000) -> list[ObjectInfo]:
        """Up to ``limit`` objects under ``prefix`` after ``start_after``, in key order.

        One list_objects_v2 call per 1,000 keys wanted; never lists past ``limit``.
        """
        if limit <= 0:
            return []
        out: list[ObjectInfo] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while len(out) < limit:
            kwargs["MaxKeys"] = min(S3_MAX_PAGE, limit - len(out))
            page = self.client.list_objects_v2(**kwargs)
            out.extend(_info_of(obj) for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        return out[:limit]

    def iter_all(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield _info_of(obj)

    # ---- addressing --------------------------------------------------------------------
    def local_path(self, key: str) -> Path | None:
        return None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{_check_key(key)}"


def _info_of(obj: dict[str, Any]) -> ObjectInfo:
    modified = obj["LastModified"]
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=timezone.utc)
    return ObjectInfo(obj["Key"], int(obj["Size"]), _etag(obj["ETag"]), modified)

