"""Where archives live: a local directory (``file:///path``) or S3 (``s3://bucket/prefix``).

Both stores speak the same small protocol (put a file, head, get, list, delete) with keys relative
to the store's root. Every object carries its SHA-256: S3 in user metadata (``x-amz-meta-sha256``),
checked on read back by re-hashing what comes down; the local store re-hashes the file.

S3 takes endpoint, region and credentials from the usual AWS environment/config (``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles);
files above ``MULTIPART_THRESHOLD`` go up as multipart uploads (boto3's transfer manager).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from callvault.errors import InvalidSetting, StoreUnavailable
from callvault.private import DIR_MODE, FILE_MODE, open_private, private_dir

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 64 * 1024 * 1024
_HASH_BLOCK = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # None when the object carries no checksum (not written by callvault)


class Store(Protocol):
    url: str

    def check(self) -> None: ...
    def require(self) -> None: ...
    def put_file(self, key: str, path: Path, sha256: str) -> ObjectInfo: ...
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, keys: list[str]) -> None: ...
    def purge(self, keys: list[str]) -> None: ...
    def sweep(self, prefix: str, keep: set[str]) -> list[str]: ...
    def arrow_filesystem(self) -> tuple[Any, str]: ...
    def local_path(self, key: str) -> Path | None: ...


def open_store(url: str) -> Store:
    """The store behind ``url``; InvalidSetting names the URL forms when it is none of them."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidSetting(f"archive URL {url!r}: a file URL has no host; use file:///absolute/path")
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidSetting(f"archive URL {url!r} names no bucket; use s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "" and url.startswith("/"):
        return LocalStore(Path(url))
    raise InvalidSetting(f"archive URL {url!r} is not supported; use file:///absolute/path or s3://bucket/prefix")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _same_device(path: Path, root: Path) -> bool:
    try:
        return path.stat().st_dev == root.stat().st_dev
    except OSError:
        return False


class LocalStore:
    """A directory. Writes go to a temporary name, are fsynced, then renamed: never half a file.

    Directories callvault creates are 0700 and objects 0600 (they hold transcripts); an existing root
    that other users may write to is refused (see :mod:`callvault.private`)."""

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise InvalidSetting(f"archive directory {str(root)!r} must be an absolute path")
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise InvalidSetting(f"object key {key!r} escapes the archive directory {self.root}")
        return path

    def require(self) -> None:
        """For reading: the directory must exist (a typo in --to is not an empty archive)."""
        if not self.root.is_dir():
            raise StoreUnavailable(
                f"archive directory {self.root} does not exist: check --to / CALLVAULT_ARCHIVE_URL (nothing was "
                "ever archived there)"
            )

    def check(self) -> None:
        private_dir(self.root, "archive directory", fix_mode=False)
        try:
            probe = self.root / f".callvault-probe-{os.getpid()}"
            os.close(open_private(probe))
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailable(
                f"archive directory {self.root} is not writable ({exc.strerror}): create it or fix its "
                "permissions, or pass another --to"
            ) from exc

    def _mkdirs(self, path: Path) -> None:
        """Create ``path``'s missing directories below the root, each 0700."""
        missing = []
        while path != self.root and not path.is_dir():
            missing.append(path)
            path = path.parent
        if path == self.root and not path.is_dir():
            private_dir(self.root, "archive directory", fix_mode=False)
        for d in reversed(missing):
            d.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(d, DIR_MODE)

    def _write(self, key: str, chunks: Iterator[bytes]) -> Path:
        dest = self._path(key)
        tmp = dest.with_name(f".{dest.name}.tmp")  # one name per key: a killed run's leftover is reused
        try:
            self._mkdirs(dest.parent)
            fd = open_private(tmp)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"cannot write {dest}: {exc.strerror}; free space or fix permissions") from exc
        return dest

    def put_file(self, key: str, path: Path, sha256: str) -> ObjectInfo:
        """Copy ``path`` to the object (tmp + fsync + rename); on the same filesystem a hard link of the
        spool file takes the place of the copy (the same bytes, fsynced, then renamed into place)."""
        dest = self._path(key)
        if _same_device(path, self.root):
            tmp = dest.with_name(f".{dest.name}.tmp")
            try:
                self._mkdirs(dest.parent)
                tmp.unlink(missing_ok=True)
                os.link(path, tmp)
                os.chmod(tmp, FILE_MODE)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, dest)
                return ObjectInfo(key=key, size=dest.stat().st_size, sha256=sha256)
            except OSError:  # no hard links here (some network filesystems): copy
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as src:
                while block := src.read(_HASH_BLOCK):
                    yield block

        dest = self._write(key, chunks())
        return ObjectInfo(key=key, size=dest.stat().st_size, sha256=sha256)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self._write(key, iter([data]))
        return ObjectInfo(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key=key, size=path.stat().st_size, sha256=sha256_file(path))

    def get_file(self, key: str, dest: Path) -> None:
        try:
            with self._path(key).open("rb") as src, os.fdopen(open_private(dest), "wb") as out:
                shutil.copyfileobj(src, out, _HASH_BLOCK)
        except FileNotFoundError:
            raise StoreUnavailable(f"{key} is missing from the archive at {self.url}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreUnavailable(f"{key} is missing from the archive at {self.url}") from None

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                yield ObjectInfo(key=path.relative_to(self.root).as_posix(), size=path.stat().st_size, sha256=None)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def purge(self, keys: list[str]) -> None:
        """Delete ``keys`` for good (a directory keeps no older versions: :meth:`delete`)."""
        self.delete(keys)

    def sweep(self, prefix: str, keep: set[str]) -> list[str]:
        """Delete every file under ``prefix`` that is not in ``keep``, temporary leftovers included."""
        base = self._path(prefix)
        if not base.is_dir():
            return []
        gone = []
        for path in sorted(base.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key not in keep:
                path.unlink(missing_ok=True)
                gone.append(key)
        return gone

    def arrow_filesystem(self) -> tuple[Any, str]:
        from pyarrow import fs

        return fs.LocalFileSystem(), str(self.root)

    def local_path(self, key: str) -> Path | None:
        """The object's file: readers read it in place."""
        return self._path(key)


class S3Store:
    """A bucket and prefix, through boto3 (configuration from the standard AWS environment)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        self.client = boto3.session.Session().client("s3", config=cfg)

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def _fail(self, what: str, exc: Exception) -> StoreUnavailable:
        from botocore.exceptions import ClientError

        detail = str(exc)
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            detail = f"{code}: {exc.response.get('Error', {}).get('Message', '')}"
        return StoreUnavailable(
            f"S3 {what} failed on {self.url} ({detail}). Check the bucket exists and AWS credentials, region and "
            "AWS_ENDPOINT_URL are right; nothing was dropped, run again once the store is reachable"
        )

    def require(self) -> None:
        self.check()

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("head_bucket", exc) from exc

    def put_file(self, key: str, path: Path, sha256: str) -> ObjectInfo:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        tc = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)
        try:
            self.client.upload_file(
                str(path), self.bucket, self._key(key), ExtraArgs={"Metadata": {"sha256": sha256}}, Config=tc
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._fail(f"upload of {key}", exc) from exc
        return ObjectInfo(key=key, size=path.stat().st_size, sha256=sha256)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(f"upload of {key}", exc) from exc
        return ObjectInfo(key=key, size=len(data), sha256=digest)

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(f"head of {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._fail(f"head of {key}", exc) from exc
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), sha256=resp.get("Metadata", {}).get("sha256"))

    def get_file(self, key: str, dest: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            os.close(open_private(dest))  # created 0600 first: boto3 writes into it and renames over it
            self.client.download_file(self.bucket, self._key(key), str(dest))
            os.chmod(dest, 0o600)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._fail(f"download of {key}", exc) from exc

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return bytes(body.read())
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(f"download of {key}", exc) from exc

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        full = _join(self.prefix, prefix)
        strip = len(self.prefix.strip("/")) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full + "/" if full else ""
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(key=obj["Key"][strip:], size=int(obj["Size"]), sha256=None)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(f"listing of {prefix or '/'}", exc) from exc

    def delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            chunk = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise self._fail("delete", exc) from exc
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreUnavailable(f"S3 refused to delete {first.get('Key')}: {first.get('Message')}")

    def purge(self, keys: list[str]) -> None:
        """Delete ``keys`` and, in a versioned bucket, every older version and delete marker of them (an
        erasure must not leave a copy behind a delete marker); an unversioned bucket: :meth:`delete`."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.delete(keys)
        for key in keys:
            full = self._key(key)
            try:
                pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=full)
                versions = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for page in pages for v in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
                    if v["Key"] == full and v.get("VersionId") not in (None, "null")
                ]  # fmt: skip
                for i in range(0, len(versions), 1000):
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": versions[i : i + 1000], "Quiet": True}
                    )
            except (BotoCoreError, ClientError) as exc:
                raise self._fail("delete the versions of", exc) from exc

    def sweep(self, prefix: str, keep: set[str]) -> list[str]:
        """Delete every object under ``prefix`` not in ``keep`` and abort unfinished multipart uploads
        there (a killed upload's parts are billed until aborted)."""
        from botocore.exceptions import BotoCoreError, ClientError

        gone = [o.key for o in self.iter_objects(prefix) if o.key not in keep]
        if gone:
            self.delete(gone)
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix) + "/"
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    gone.append(up["Key"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(f"cleanup of {prefix}", exc) from exc
        return gone

    def arrow_filesystem(self) -> tuple[Any, str]:
        """A pyarrow S3 filesystem built from the same configuration boto3 resolved."""
        from pyarrow import fs

        creds = self.client._request_signer._credentials  # resolved by botocore's provider chain
        frozen = creds.get_frozen_credentials() if creds else None
        endpoint = self.client.meta.endpoint_url
        parsed = urlparse(endpoint)
        kwargs: dict[str, Any] = {"region": self.client.meta.region_name or "us-east-1"}
        if frozen is not None:
            kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
        if parsed.hostname and not parsed.hostname.endswith("amazonaws.com"):
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        return fs.S3FileSystem(**kwargs), _join(self.bucket, self.prefix)

    def local_path(self, key: str) -> Path | None:
        """None: S3 objects are downloaded to be read."""
        return None
