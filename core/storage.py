"""Object storage: one interface, two backends.

- `LocalStorage` (default, `file://path`): files on disk, served by the web app through signed,
  expiring URLs (`/files/<token>`).
- `S3Storage` (`s3://key:secret@host:port/bucket?secure=..&region=..`): any S3-compatible store
  through the `minio` client; the bucket is created if missing, objects stay private and are
  handed out as presigned GET URLs built for the public endpoint.

Keys come from `core.catalogue` (`users/<user_id>/songs/<song_id>/master.wav`, ...).
"""
from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, quote, unquote, urlparse

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer


class StorageUnavailable(RuntimeError):
    """The store did not answer (connection refused, timed out, reset): worth retrying."""


def content_disposition(filename: str | None, inline: bool = False) -> str | None:
    if not filename:
        return None
    ascii_name = "".join(ch if ch.isalnum() or ch in " ._-()" else "_" for ch in filename).strip() or "download"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


class Storage(Protocol):
    kind: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def entries(self, prefix: str) -> list[tuple[str, float]]: ...  # (key, last modified, Unix time)
    def url(self, key: str, ttl: int, download_name: str | None = None) -> str: ...
    def ping(self) -> None: ...


class LocalStorage:
    kind = "local"

    def __init__(self, root: str | Path, secret_key: str, url_prefix: str = "/files/"):
        self.root = Path(root).resolve()
        self.url_prefix = url_prefix
        self._signer = URLSafeTimedSerializer(secret_key, salt="tunesmith-files")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def entries(self, prefix: str) -> list[tuple[str, float]]:
        return [(key, self._path(key).stat().st_mtime) for key in self.list(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        base = self._path(prefix)
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True) if base.exists() else []:
            d.rmdir()
        if base.exists() and base.is_dir() and not any(base.iterdir()):
            base.rmdir()
        return len(keys)

    def url(self, key: str, ttl: int, download_name: str | None = None) -> str:
        token = self._signer.dumps({"k": key, "d": download_name, "t": ttl})
        return f"{self.url_prefix}{token}"

    def resolve(self, token: str) -> tuple[Path, str | None]:
        """Check a token from `url()`; returns (file path, download name). Raises PermissionError."""
        try:
            payload = self._signer.loads(token, max_age=None)
            self._signer.loads(token, max_age=int(payload.get("t", 0)))
        except SignatureExpired as exc:
            raise PermissionError("this link has expired") from exc
        except BadSignature as exc:
            raise PermissionError("this link is not valid") from exc
        return self._path(payload["k"]), payload.get("d")

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / ".ping"
        probe.write_bytes(b"ok")
        probe.unlink()


class S3Storage:
    kind = "s3"

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool,
                 region: str, public_url: str | None = None):
        from minio import Minio

        self.bucket = bucket
        self.region = region
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        if public_url:
            pub = urlparse(public_url if "://" in public_url else f"http://{public_url}")
            self.public = Minio(pub.netloc, access_key=access_key, secret_key=secret_key,
                                secure=pub.scheme == "https", region=region)
        else:
            self.public = self.client
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket, location=self.region)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
        self._bucket_ready = True

    def _call(self, fn, *args, **kwargs):
        """Run a client call; connection-level failures become StorageUnavailable."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            return fn(*args, **kwargs)
        except S3Error:
            raise
        except (Urllib3Error, ConnectionError, TimeoutError, OSError) as exc:
            raise StorageUnavailable(f"storage unreachable: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._call(self._ensure_bucket)
        self._call(self.client.put_object, self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        resp = self._call(self.client.get_object, self.bucket, key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self._call(self.client.stat_object, self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}:
                return False
            raise

    def delete(self, key: str) -> None:
        self._call(self.client.remove_object, self.bucket, key)

    def list(self, prefix: str) -> list[str]:
        from minio.error import S3Error

        try:
            return sorted(o.object_name for o in self._call(
                lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True))))
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise

    def entries(self, prefix: str) -> list[tuple[str, float]]:
        from minio.error import S3Error

        try:
            return sorted((o.object_name, o.last_modified.timestamp()) for o in self._call(
                lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True))))
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise

    def delete_prefix(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        keys = self.list(prefix)
        if keys:
            errors = list(self._call(self.client.remove_objects, self.bucket, [DeleteObject(k) for k in keys]))
            if errors:
                raise StorageUnavailable(f"could not delete {len(errors)} object(s) under {prefix}")
        return len(keys)

    def url(self, key: str, ttl: int, download_name: str | None = None) -> str:
        headers = {}
        disposition = content_disposition(download_name)
        if disposition:
            headers["response-content-disposition"] = disposition
        return self.public.presigned_get_object(self.bucket, key, expires=timedelta(seconds=ttl),
                                                response_headers=headers or None)

    def ping(self) -> None:
        self._call(self._ensure_bucket)


def from_url(url: str, secret_key: str, public_url: str | None = None) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = url[len("file://"):]
        return LocalStorage(path, secret_key)
    if parsed.scheme in {"s3", "minio"}:
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        bucket = parsed.path.strip("/")
        if not bucket:
            raise ValueError("STORAGE_URL needs a bucket: s3://key:secret@host:port/bucket")
        return S3Storage(
            endpoint=f"{parsed.hostname}:{parsed.port}" if parsed.port else parsed.hostname,
            access_key=unquote(parsed.username or ""), secret_key=unquote(parsed.password or ""),
            bucket=bucket, secure=q.get("secure", "true").lower() in {"1", "true", "yes"},
            region=q.get("region", "us-east-1"), public_url=public_url)
    raise ValueError(f"STORAGE_URL scheme {parsed.scheme!r} is not supported (use file:// or s3://)")


_cache: dict[tuple, Storage] = {}


def get_storage(config) -> Storage:
    """The storage for these settings (one client per process and setting)."""
    key = (config.STORAGE_URL, config.SECRET_KEY, config.STORAGE_PUBLIC_URL)
    if key not in _cache:
        _cache[key] = from_url(*key)
    return _cache[key]


def with_retries(fn, attempts: int = 4, base_delay: float = 0.5, sleep=time.sleep):
    """Call fn(); on StorageUnavailable retry with exponential backoff, then re-raise."""
    for attempt in range(attempts):
        try:
            return fn()
        except StorageUnavailable:
            if attempt == attempts - 1:
                raise
            sleep(base_delay * (2 ** attempt))
