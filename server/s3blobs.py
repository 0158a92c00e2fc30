"""Blobs in an S3-protocol object store: `s3://bucket/prefix` (boto3).

```
PREFIX/sha256/ab/abcdef...     committed blobs, the same layout as DATA/blobs/
PREFIX/tmp/<random>            uploads on their way in (never read by content address)
```
A commit uploads the staged file to a temp key (multipart above
`multipart_threshold_bytes`, every part with S3's SHA-256 checksum), checks that the
checksum S3 computed matches the sha256 staged locally, and only then copies the
object to its content address and deletes the temp key. A crash at any point leaves
at most a temp key or an unfinished multipart upload, which `sweep_orphans` removes
after the grace period (another replica may still be writing a young one).

Endpoint, region and credentials come from the AWS SDK's standard sources, read by
boto3 itself: AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_REGION or
AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_CONFIG_FILE and
AWS_SHARED_CREDENTIALS_FILE. Nothing secret is ever on the command line or in the URL.
Errors from boto3 become BlobsUnavailable (or ArtifactNotFound), chained.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Final

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from s3transfer.utils import ChunksizeAdjuster

from fleetcast.proto.addresses import is_loopback
from fleetcast.server.blobs import SHA256_PATTERN, Staging, StagedFile, blob_key, check_sha256
from fleetcast.server.errors import ArtifactNotFound, BlobsUnavailable, InvalidRequest

logger = logging.getLogger(__name__)

MiB: Final = 1024**2
BUCKET_NAME: Final = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_MISSING: Final = frozenset({"404", "NoSuchKey", "NotFound"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); refuses credentials in the URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidRequest(f"--blobs {url[:80]!r} must be s3://BUCKET/PREFIX with no credentials, query "
                             "or fragment; give credentials in AWS_* variables or AWS_SHARED_CREDENTIALS_FILE")
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not re.fullmatch(BUCKET_NAME, bucket):
        raise InvalidRequest(f"--blobs bucket {bucket[:80]!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    if ".." in prefix.split("/") or "//" in prefix or len(prefix) > 512:
        raise InvalidRequest(f"--blobs prefix {prefix[:80]!r} must be plain path segments (no '..', no '//')")
    return bucket, prefix


def check_endpoint(url: str) -> None:
    """Refuses a plain-http S3 endpoint off loopback: blobs and presigned URLs travel over TLS."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        raise InvalidRequest(f"the S3 endpoint {url[:80]!r} is not https; plain http is allowed only on "
                             "loopback: fix AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL")


class S3Blobs(Staging):
    """The `Blobs` protocol over one bucket and prefix."""

    def __init__(self, *, client: Any, bucket: str, prefix: str, tmp_dir: Path,
                 multipart_threshold_bytes: int = 64 * MiB, part_bytes: int = 16 * MiB) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold_bytes, multipart_chunksize=part_bytes,
                                       use_threads=False)

    @classmethod
    def connect(cls, *, bucket: str, prefix: str, tmp_dir: Path, region: str | None = None,
                **sizes: int) -> "S3Blobs":
        """A client from the AWS SDK's standard environment and files (see the module docstring);
        `region` (AWS_REGION, read by the config) wins over AWS_DEFAULT_REGION and the config file."""
        # Addressing style as boto3 decides (virtual-hosted on AWS, path for an IP endpoint), or as
        # the profile in AWS_CONFIG_FILE says (`s3 = addressing_style = path` for MinIO and the like).
        config = botocore.config.Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 4})
        try:
            client = boto3.session.Session().client("s3", config=config, region_name=region)
        except botocore.exceptions.BotoCoreError as e:
            raise BlobsUnavailable(f"cannot set up the S3 client for s3://{bucket}/{prefix}: {e}; "
                                   "check AWS_REGION and AWS_ENDPOINT_URL") from e
        check_endpoint(str(client.meta.endpoint_url))
        return cls(client=client, bucket=bucket, prefix=prefix, tmp_dir=tmp_dir, **sizes)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, sha256: str) -> str:
        return self.prefix + blob_key(sha256)

    # -- reading -------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        try:
            self.length(sha256)
        except ArtifactNotFound:
            return False
        return True

    def length(self, sha256: str) -> int:
        with self._errors(f"reading the size of blob {sha256}", sha256):
            return int(self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))["ContentLength"])

    def open(self, sha256: str, offset: int = 0) -> BinaryIO:
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        with self._errors(f"reading blob {sha256}", sha256):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.key(sha256), **extra)["Body"]
            except botocore.exceptions.ClientError as e:
                if _code(e) != "InvalidRange":
                    raise
                return _Empty()   # offset at the very end: nothing more to read

    def file_path(self, sha256: str) -> Path | None:
        return None

    @contextmanager
    def local_file(self, sha256: str) -> Iterator[Path]:
        path = self.tmp_dir / f"{secrets.token_hex(12)}.copy"
        try:
            with self._errors(f"copying blob {sha256} to {self.tmp_dir}", sha256):
                self.client.download_file(self.bucket, self.key(sha256), str(path), Config=self.transfer)
            path.chmod(0o600)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def presigned_url(self, sha256: str, *, expires_s: int) -> str | None:
        with self._errors(f"presigning blob {sha256}", sha256):
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha256)}, ExpiresIn=expires_s))

    def check_ready(self) -> None:
        with self._errors(f"reaching bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)
        self.check_scratch()

    # -- writing -------------------------------------------------------------------

    def commit(self, staged: StagedFile) -> tuple[str, int]:
        """Uploads to a temp key, checks S3's SHA-256 against the staged one, then copies into place."""
        staged.finish()
        sha256, length = staged.sha256, staged.length
        final = self.key(sha256)
        try:
            if not self.exists(sha256):
                temp = f"{self.prefix}tmp/{secrets.token_hex(12)}"
                try:
                    self._upload_checked(staged.path, temp, sha256=sha256, length=length)
                    with self._errors(f"copying the upload of {sha256} into place"):
                        self.client.copy({"Bucket": self.bucket, "Key": temp}, self.bucket, final, Config=self.transfer)
                finally:
                    with self._errors(f"removing temp object {temp}"):
                        self.client.delete_object(Bucket=self.bucket, Key=temp)
            logger.debug("blob stored store=%s sha256=%s length=%d", self, sha256, length)
        finally:
            staged.discard()
        return sha256, length

    def _upload_checked(self, path: Path, key: str, *, sha256: str, length: int) -> None:
        with self._errors(f"uploading blob {sha256}"):
            with open(path, "rb") as f:
                self.client.upload_fileobj(f, self.bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                                           Config=self.transfer)
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256")
        expected = _s3_sha256(path, sha256=sha256, length=length, transfer=self.transfer)
        # A multipart checksum is the digest of the part digests; AWS appends "-<parts>", moto does not.
        if int(head["ContentLength"]) != length or stored not in (expected, expected.split("-")[0]):
            raise BlobsUnavailable(
                f"{self} stored {head['ContentLength']} bytes with SHA-256 checksum {stored!r} for an upload of "
                f"{length} bytes ({expected!r} expected); nothing was committed: check the object store "
                "(it must support ChecksumAlgorithm=SHA256)")

    # -- sweeping ------------------------------------------------------------------

    def sweep_orphans(self, referenced: Callable[[str], bool], *, grace_s: float, now: float | None = None) -> int:
        """Removes unreferenced blobs, temp keys and unfinished multipart uploads older than `grace_s`."""
        cutoff = (time.time() if now is None else now) - grace_s
        removed = 0
        with self._errors("sweeping orphan blobs"):
            for item in self._listing(f"{self.prefix}sha256/"):
                name = item["Key"].rsplit("/", 1)[-1]
                if (SHA256_PATTERN.fullmatch(name) and item["Key"] == self.key(name)
                        and item["LastModified"].timestamp() < cutoff and not referenced(name)):
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
                    logger.info("orphan blob removed store=%s sha256=%s", self, name)
            for item in self._listing(f"{self.prefix}tmp/"):
                if item["LastModified"].timestamp() < cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}tmp/")
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
        return removed

    def _listing(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    @contextmanager
    def _errors(self, doing: str, sha256: str | None = None) -> Iterator[None]:
        """boto3's errors as ours: a missing key is ArtifactNotFound, the rest BlobsUnavailable."""
        if sha256 is not None:
            check_sha256(sha256)
        try:
            yield
        except botocore.exceptions.ClientError as e:
            if sha256 is not None and _code(e) in _MISSING:
                raise ArtifactNotFound(f"no blob with sha256 {sha256}") from e
            raise BlobsUnavailable(f"{self}: {doing} failed: {_code(e)} {e}; check the bucket, the "
                                   "credentials (AWS_* variables or files) and the endpoint") from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise BlobsUnavailable(f"{self}: {doing} failed: {e}; check AWS_ENDPOINT_URL, the credentials "
                                   "and the network") from e


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _s3_sha256(path: Path, *, sha256: str, length: int, transfer: TransferConfig) -> str:
    """The ChecksumSHA256 S3 reports for this file uploaded with `transfer`: the digest
    itself for one PUT, the digest of the part digests plus "-N" for a multipart upload."""
    if length < transfer.multipart_threshold:
        return base64.b64encode(bytes.fromhex(sha256)).decode()
    part_bytes = ChunksizeAdjuster().adjust_chunksize(transfer.multipart_chunksize, length)
    parts = []
    with open(path, "rb") as f:
        while chunk := f.read(part_bytes):
            parts.append(hashlib.sha256(chunk).digest())
    return f"{base64.b64encode(hashlib.sha256(b''.join(parts)).digest()).decode()}-{len(parts)}"


class _Empty:
    """A readable, closable nothing: the bytes past a blob's end."""

    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Empty":
        return self

    def __exit__(self, *exc: object) -> None:
        pass
