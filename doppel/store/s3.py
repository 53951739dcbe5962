"""The `s3://bucket[/root]?endpoint=...` backend, through the `minio` SDK.

Works with MinIO, SeaweedFS, AWS S3 and other S3 servers. Every SDK and network error is
turned into one of Doppel's errors here, with the endpoint named; the HTTP client uses
short connect timeouts and few retries so a store that is down fails in seconds.
`open_write` spools to a bounded temporary file and uploads on clean exit; large objects
go up in multipart parts.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from tempfile import SpooledTemporaryFile
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name

from doppel.errors import DoppelError, InvalidArgument, StorageUnavailable

from .base import ObjectInfo, Store, validate_key, validate_prefix

EXAMPLE = "s3://my-bucket/optional/root?endpoint=127.0.0.1:9000&secure=false&access_key=KEY&secret_key=SECRET"
OPTIONS = ("endpoint", "secure", "region", "access_key", "secret_key", "session_token")
SECRETS = ("secret_key", "session_token")
PART_SIZE = 8 << 20  # multipart part size; also what `put` of a stream buffers per part
SPOOL_BYTES = 8 << 20  # `open_write` keeps this much in memory, then spills to disk
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 120.0
AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "AllAccessDisabled",
    "AccountProblem",
}


class _HttpClient(urllib3.PoolManager):
    """minio's pool, remembering the server's name (SeaweedFS needs its listing re-sorted)."""

    server = ""

    # PoolManager.urlopen itself overrides RequestMethods.urlopen incompatibly (urllib3 ignores it there too).
    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:  # type: ignore[override]
        response = super().urlopen(method, url, redirect=redirect, **kw)
        self.server = response.headers.get("Server", self.server)
        return response


def _http_client() -> _HttpClient:
    return _HttpClient(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=2,
            connect=1,
            read=1,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
            raise_on_status=False,  # let minio read the server's own error message
        ),
    )


def _redact(url: str) -> str:
    """`url` fit for an error message: secret values and user:password@ replaced by ***."""
    head, sep, query = url.partition("?")
    scheme, slashes, rest = head.partition("://")
    if "@" in rest.split("/", 1)[0]:
        head = f"{scheme}{slashes}***@{rest.split('@', 1)[1]}"
    items = []
    for item in query.split("&") if sep else []:
        name, eq, _ = item.partition("=")
        items.append(f"{name}=***" if unquote(name) in SECRETS and eq else item)
    return head + sep + "&".join(items)


def _query(url: str, query: str) -> dict[str, str]:
    """Query options; values are percent-decoded but '+' stays '+' (it is common in secrets)."""
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        name = unquote(name)
        if name not in OPTIONS:
            raise InvalidArgument(
                f"store URL {url!r}: option {name!r} is not known; use {', '.join(OPTIONS)}, for example {EXAMPLE}"
            )
        if name in options:
            raise InvalidArgument(f"store URL {url!r}: option {name!r} is given twice")
        options[name] = unquote(value)
    return options


def _endpoint(url: str, endpoint: str, secure: str | None) -> tuple[str, bool]:
    """(host:port, secure) from `endpoint` and the `secure` option."""
    flag = None
    if secure is not None:
        flag = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(secure.lower())
        if flag is None:
            raise InvalidArgument(f"store URL {url!r}: secure must be true or false, not {secure!r}")
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or parts.path.strip("/") or parts.query or not parts.netloc:
            raise InvalidArgument(
                f"store URL {url!r}: endpoint {endpoint!r} must be host:port, http://host:port "
                f"or https://host:port, for example {EXAMPLE}"
            )
        from_scheme = parts.scheme == "https"
        if flag is not None and flag != from_scheme:
            raise InvalidArgument(f"store URL {url!r}: endpoint {endpoint!r} contradicts secure={secure}")
        return parts.netloc, from_scheme
    return endpoint, True if flag is None else flag


class S3Store(Store):
    """Objects in one bucket, optionally under a root prefix."""

    def __init__(
        self, client: Minio, http: _HttpClient, *, bucket: str, root: str, endpoint: str, url: str, anonymous: bool
    ):
        self._client, self._http = client, http
        self._bucket, self._root, self._endpoint, self._anonymous = bucket, root, endpoint, anonymous
        self.url = url
        with self._errors(f"opening bucket {bucket!r}"):
            if not client.bucket_exists(bucket):
                try:
                    client.make_bucket(bucket)
                except S3Error as e:
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
        # SeaweedFS lists folder by folder, so "a/x" comes before "a-b"; S3 sorts by key.
        self._server_sorts = not http.server.lower().startswith("seaweedfs")

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """Open (and create if missing) the bucket an `s3://` URL names."""
        parts, url = urlsplit(url), _redact(url)  # `url` from here on is for messages
        bucket = parts.netloc
        if not bucket:
            raise InvalidArgument(f"store URL {url!r} names no bucket, for example {EXAMPLE}")
        if "@" in bucket:
            raise InvalidArgument(
                f"store URL {url!r}: give credentials as access_key=...&secret_key=..., for example {EXAMPLE}"
            )
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise InvalidArgument(
                f"store URL {url!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, "
                f"digits, '.' and '-'), for example {EXAMPLE}"
            ) from None
        root = parts.path.strip("/")
        if root:
            try:
                validate_key(root)
            except DoppelError as e:
                raise InvalidArgument(f"store URL {url!r}: bad root prefix: {e}") from None
        options = _query(url, parts.query)
        if not options.get("endpoint"):
            raise InvalidArgument(f"store URL {url!r} needs endpoint=host:port, for example {EXAMPLE}")
        host, secure = _endpoint(url, options["endpoint"], options.get("secure"))
        access_key = options.get("access_key") or os.environ.get("AWS_ACCESS_KEY_ID") or None
        secret_key = options.get("secret_key") or os.environ.get("AWS_SECRET_ACCESS_KEY") or None
        token = options.get("session_token") or os.environ.get("AWS_SESSION_TOKEN") or None
        if bool(access_key) != bool(secret_key):
            raise InvalidArgument(
                f"store URL {url!r}: give both access_key and secret_key (or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY), or neither for anonymous access"
            )
        public = "&".join(f"{k}={quote(v, safe=':/')}" for k, v in options.items() if k not in SECRETS)
        public_url = f"s3://{bucket}" + (f"/{root}" if root else "") + (f"?{public}" if public else "")
        http = _http_client()
        try:
            client = Minio(
                host,
                access_key=access_key,
                secret_key=secret_key,
                session_token=token,
                secure=secure,
                region=options.get("region") or None,
                http_client=http,
            )
        except ValueError as e:
            raise InvalidArgument(f"store URL {url!r}: bad endpoint {host!r}: {e}") from None
        scheme = "https" if secure else "http"
        return cls(
            client,
            http,
            bucket=bucket,
            root=f"{root}/" if root else "",
            endpoint=f"{scheme}://{host}",
            url=public_url,
            anonymous=not access_key,
        )

    # -- errors ------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn SDK and network errors raised inside into Doppel's errors."""
        where = f"S3 endpoint {self._endpoint} (bucket {self._bucket!r})"
        try:
            yield
        except DoppelError:
            raise
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject") and key is not None:
                raise self._not_found(key) from None
            if e.code in AUTH_CODES and self._anonymous:
                raise StorageUnavailable(
                    f"{where} refused anonymous access while {action} ({e.code}); no credentials were given: "
                    "add access_key=...&secret_key=... to the store URL or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                ) from None
            if e.code in AUTH_CODES:
                raise StorageUnavailable(
                    f"{where} rejected the credentials while {action} ({e.code}: {e.message}); check "
                    "access_key/secret_key in the store URL or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                ) from None
            if e.code in ("KeyTooLongError", "EntityTooLarge", "InvalidObjectName"):
                raise InvalidArgument(f"{where} refused {key!r} while {action}: {e.code}: {e.message}") from None
            raise StorageUnavailable(f"{where} failed while {action}: {e.code}: {e.message}") from None
        except ServerError as e:
            raise StorageUnavailable(f"{where} answered HTTP {e.status_code} while {action}") from None
        except InvalidResponseError as e:
            raise StorageUnavailable(f"{where} gave a non-S3 answer while {action}: {str(e)[:300]}") from None
        except urllib3.exceptions.HTTPError as e:
            reason = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason else e
            hint = ""
            if isinstance(reason, urllib3.exceptions.SSLError):
                hint = "; if the server speaks plain HTTP, add secure=false or use endpoint=http://host:port"
            text = str(reason).split(">: ", 1)[-1]  # drop "<urllib3...Connection object at 0x..>: "
            raise StorageUnavailable(f"cannot reach {where} while {action}: {text}{hint}") from None
        except OSError as e:
            raise StorageUnavailable(f"cannot reach {where} while {action}: {e}") from None

    # -- primitives --------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + validate_key(key)

    def put(self, key: str, data: bytes | BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        name = self._name(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = io.BytesIO(data)
            length = len(data.getbuffer())
        else:
            length = _remaining(data)
        counter = _Counting(data)
        try:
            with self._errors(f"writing {key!r}", key):
                result = self._client.put_object(
                    self._bucket,
                    name,
                    counter,  # type: ignore[arg-type]  # minio only calls .read(); its BinaryIO hint is stricter
                    length,
                    content_type=content_type,
                    part_size=PART_SIZE,
                )
        except DoppelError:
            if counter.error is not None:  # the caller's stream failed, not the server
                raise counter.error from None
            raise
        modified = result.last_modified
        if modified is None and result.http_headers.get("Date"):
            modified = parsedate_to_datetime(result.http_headers["Date"])
        return ObjectInfo(key, counter.count, (modified or datetime.now(UTC)).astimezone(UTC), result.etag or "")

    @contextmanager
    def open_write(self, key: str, *, content_type: str = "application/octet-stream") -> Iterator[BinaryIO]:
        self._name(key)
        with SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            yield spool  # type: ignore[misc]  # typeshed: SpooledTemporaryFile is file-like, yet no BinaryIO
            spool.seek(0)
            self.put(key, spool, content_type=content_type)  # type: ignore[arg-type]  # as above

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        name = self._name(key)
        with self._errors(f"reading {key!r}", key):
            response = self._client.get_object(self._bucket, name)
        reader = io.BufferedReader(_Body(response, self, key), buffer_size=1 << 16)
        with reader:
            yield reader

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        with self._errors(f"reading the size of {key!r}", key):
            obj = self._client.stat_object(self._bucket, name)
        return self._info(key, obj)

    @staticmethod
    def _info(key: str, obj: Any) -> ObjectInfo:
        modified = (obj.last_modified or datetime.now(UTC)).astimezone(UTC)
        return ObjectInfo(key, obj.size or 0, modified, obj.etag or "")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if self._server_sorts:
            return self._list_recursive(prefix)
        return self._list_levels(self._root + prefix)

    def _list_recursive(self, prefix: str) -> Iterator[ObjectInfo]:
        """One recursive listing, streamed page by page; S3 sorts it by key."""
        with self._errors(f"listing {prefix!r}"):
            for obj in self._client.list_objects(self._bucket, prefix=self._root + prefix, recursive=True):
                if not obj.object_name.endswith("/"):
                    yield self._info(obj.object_name[len(self._root) :], obj)

    def _list_levels(self, prefix: str) -> Iterator[ObjectInfo]:
        """Folder by folder, each sorted here: for servers whose recursive listing is not in key order."""
        with self._errors(f"listing {prefix[len(self._root):]!r}"):
            level = list(self._client.list_objects(self._bucket, prefix=prefix, recursive=False))
        level.sort(key=lambda o: o.object_name)
        for obj in level:
            if obj.is_dir:
                if len(obj.object_name) > len(prefix):  # SeaweedFS lists an emptied folder as itself
                    yield from self._list_levels(obj.object_name)
            elif not obj.object_name.endswith("/"):
                yield self._info(obj.object_name[len(self._root) :], obj)

    def delete(self, key: str) -> bool:
        name = self._name(key)
        with self._errors(f"deleting {key!r}", key):
            try:
                self._client.stat_object(self._bucket, name)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return False
                raise
            self._client.remove_object(self._bucket, name)
        return True

    def delete_prefix(self, prefix: str) -> int:
        self._check_delete_prefix(prefix)
        names = (DeleteObject(self._root + info.key) for info in self._list_recursive(prefix))
        counter = _CountingIter(names)
        with self._errors(f"deleting under {prefix!r}"):
            failures = list(self._client.remove_objects(self._bucket, counter))
        if failures:
            first = failures[0]
            raise StorageUnavailable(
                f"S3 endpoint {self._endpoint} did not delete {len(failures)} of {counter.count} objects under "
                f"{prefix!r} in bucket {self._bucket!r}; first: {first.name!r}: {first.code}: {first.message}"
            )
        return counter.count

    def close(self) -> None:
        self._http.clear()


def _remaining(stream: BinaryIO) -> int:
    """Bytes left in a seekable stream, or -1 (unknown: minio then uploads part by part)."""
    try:
        if not stream.seekable():
            return -1
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return -1


class _Counting:
    """A read-only view of a stream that counts the bytes read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream, self.count = stream, 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except BaseException as e:
            self.error = e
            raise
        self.count += len(data)
        return data


class _CountingIter:
    def __init__(self, items: Iterator[Any]):
        self._items, self.count = items, 0

    def __iter__(self) -> _CountingIter:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self.count += 1
        return item


class _Body(io.RawIOBase):
    """An object's HTTP body as a raw stream; closing it releases the connection."""

    def __init__(self, response: Any, store: S3Store, key: str):
        self._response, self._store, self._key = response, store, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._store._errors(f"reading {self._key!r}", self._key):
            data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()
