"""The object store contract, run against both backends (a local folder and SeaweedFS S3),
plus the things only one backend has: staging and folder clashes locally; credentials,
endpoints, multipart and listing order on S3."""

from __future__ import annotations

import contextlib
import io
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from doppel.errors import InvalidArgument, InvalidKey, NotFound, StorageUnavailable
from doppel.store import ObjectInfo, Store, open_store, validate_key, validate_prefix

MiB = 1 << 20


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (tmp_path / "store").as_uri() if request.param == "file" else request.getfixturevalue("s3_store_url")
    with open_store(url) as s:
        yield s


def keys(items: Iterator[ObjectInfo]) -> list[str]:
    return [i.key for i in items]


class Trickle(io.RawIOBase):
    """A non-seekable stream handing out a few bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 7):
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._data[self._pos : self._pos + min(self._step, len(buffer))]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


# -- round trips ------------------------------------------------------------------


def test_put_get_bytes(store: Store) -> None:
    info = store.put("a/b.txt", b"hello")
    assert (info.key, info.size) == ("a/b.txt", 5)
    assert info.modified.tzinfo is not None and info.modified.utcoffset().total_seconds() == 0
    assert store.get("a/b.txt") == b"hello"
    stat = store.stat("a/b.txt")
    assert (stat.key, stat.size) == ("a/b.txt", 5)
    assert stat.modified.tzinfo == UTC


def test_put_empty_object(store: Store) -> None:
    assert store.put("empty", b"").size == 0
    assert store.get("empty") == b""
    assert keys(store.list()) == ["empty"]


@pytest.mark.parametrize("kind", ["seekable", "stream"])
def test_put_file_object(store: Store, kind: str) -> None:
    data = random.Random(1).randbytes(100_000)
    src = io.BytesIO(data) if kind == "seekable" else Trickle(data, step=4096)
    info = store.put("blob.bin", src)  # type: ignore[arg-type]
    assert info.size == len(data)
    assert store.get("blob.bin") == data
    assert store.stat("blob.bin").size == len(data)


def test_put_of_a_failing_stream_stores_nothing(store: Store) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        store.put("k", Broken())  # type: ignore[arg-type]
    assert keys(store.list()) == []


def test_put_seekable_stream_from_its_position(store: Store) -> None:
    src = io.BytesIO(b"skip-me:payload")
    src.seek(8)
    assert store.put("k", src).size == 7
    assert store.get("k") == b"payload"


def test_open_write_open_read_streaming(store: Store) -> None:
    chunks = [bytes([i]) * (i + 1) for i in range(200)]
    with store.open_write("streams/one", content_type="text/plain") as out:
        for c in chunks:
            out.write(c)
    data = b"".join(chunks)
    with store.open_read("streams/one") as src:
        parts = []
        while part := src.read(1000):
            parts.append(part)
    assert len(parts) > 1
    assert b"".join(parts) == data
    assert store.stat("streams/one").size == len(data)


def test_open_read_partial_then_close(store: Store) -> None:
    data = os.urandom(3 * MiB)
    store.put("big", data)
    for _ in range(20):
        with store.open_read("big") as src:
            assert src.read(10) == data[:10]
        assert src.closed
    assert store.get("big") == data


def test_large_object_in_many_small_writes(store: Store) -> None:
    data = random.Random(7).randbytes(12 * MiB + 12345)
    with store.open_write("large/obj.bin") as out:
        for i in range(0, len(data), 4096):
            out.write(data[i : i + 4096])
    assert store.stat("large/obj.bin").size == len(data)
    with store.open_read("large/obj.bin") as src:
        assert src.read() == data


def test_open_write_that_raises_leaves_nothing(store: Store) -> None:
    store.put("keep", b"old")
    with pytest.raises(RuntimeError), store.open_write("half") as out:
        out.write(b"x" * 1000)
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), store.open_write("keep") as out:
        out.write(b"new and partial")
        raise RuntimeError("boom")
    assert not store.exists("half")
    assert store.get("keep") == b"old"
    assert keys(store.list()) == ["keep"]


def test_overwrite_replaces(store: Store) -> None:
    store.put("k", b"a much longer first version")
    info = store.put("k", b"v2")
    assert info.size == 2
    assert store.get("k") == b"v2"
    assert store.stat("k").size == 2
    assert keys(store.list()) == ["k"]


def test_put_file_get_file(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(300_000))
    assert store.put_file("files/in.bin", src).size == 300_000
    dest = tmp_path / "out" / "nested" / "copy.bin"
    store.get_file("files/in.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    dest.write_bytes(b"stale")
    store.get_file("files/in.bin", str(dest))  # str paths too; replaces the old file
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]  # no temp litter


def test_put_file_missing_source(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nope.bin"):
        store.put_file("x", tmp_path / "nope.bin")
    assert keys(store.list()) == []


# -- missing objects --------------------------------------------------------------


def test_missing_object(store: Store, tmp_path: Path) -> None:
    store.put("there/x", b"1")
    for call in (
        lambda: store.get("there/nope"),
        lambda: store.stat("there/nope"),
        lambda: store.open_read("there/nope").__enter__(),
        lambda: store.get_file("there/nope", tmp_path / "out.bin"),
    ):
        with pytest.raises(NotFound) as err:
            call()
        assert "there/nope" in str(err.value) and store.url in str(err.value)
    assert not (tmp_path / "out.bin").exists()
    assert store.exists("there/x") and not store.exists("there/nope")
    assert store.delete("there/nope") is False
    with pytest.raises(NotFound, match=r"^no such thing 'nope'$"):  # the caller says what the key stands for
        store.get("there/nope", missing="no such thing 'nope'")
    assert store.get("there/x", missing="unused") == b"1"


def test_a_folder_is_not_an_object(store: Store) -> None:
    store.put("dir/file", b"1")
    with pytest.raises(NotFound):
        store.stat("dir")
    with pytest.raises(NotFound):
        store.get("dir")
    assert not store.exists("dir")
    assert store.delete("dir") is False
    assert store.get("dir/file") == b"1"


def test_get_file_of_missing_keeps_existing_file(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "keep.txt"
    dest.write_bytes(b"mine")
    with pytest.raises(NotFound):
        store.get_file("nope", dest)
    assert dest.read_bytes() == b"mine"


# -- listing and deleting ------------------------------------------------------------

LAYOUT = ["data/a/b", "data/a1", "data/a2/c", "data/ab", "data/b", "other/x", "top"]


def test_list_sorted_and_by_prefix(store: Store) -> None:
    for i, k in enumerate(reversed(LAYOUT)):
        store.put(k, b"x" * i)
    listing = store.list()
    assert iter(listing) is listing  # an iterator, not a list
    assert keys(listing) == LAYOUT
    assert keys(store.list("data/")) == LAYOUT[:5]
    # A plain string prefix, as in S3: a partial segment matches.
    assert keys(store.list("data/a")) == ["data/a/b", "data/a1", "data/a2/c", "data/ab"]
    assert keys(store.list("data/a/")) == ["data/a/b"]
    assert keys(store.list("t")) == ["top"]
    assert keys(store.list("top")) == ["top"]
    assert keys(store.list("nothing/")) == []
    assert keys(store.list("data/a/b/")) == []
    sizes = {i.key: i.size for i in store.list()}
    assert sizes == {k: i for i, k in enumerate(reversed(LAYOUT))}


def test_list_order_is_by_key_not_by_folder(store: Store) -> None:
    # '-' and '.' sort before '/', so "abc-2/y" comes before "abc/x" (SeaweedFS lists the other way).
    names = ["runs/abc/x", "runs/abc-2/y", "runs/abc.txt", "runs/abc0", "runs/ab c", "runs/abc/x-1/z", "runs/abc/x.1"]
    for k in names:
        store.put(k, b"1")
    assert keys(store.list()) == sorted(names)
    assert keys(store.list("runs/abc")) == sorted(n for n in names if n.startswith("runs/abc"))


def test_list_info_matches_stat(store: Store) -> None:
    store.put("i/one", b"12345")
    [listed] = store.list("i/")
    stat = store.stat("i/one")
    assert (listed.key, listed.size) == (stat.key, stat.size)
    assert listed.modified.tzinfo is not None
    assert abs((listed.modified - stat.modified).total_seconds()) < 2


def test_delete(store: Store) -> None:
    store.put("a/b", b"1")
    assert store.delete("a/b") is True
    assert store.delete("a/b") is False
    assert keys(store.list()) == []
    # With "a/b" gone, "a" is free to be an object (locally: its folder was removed).
    store.put("a", b"2")
    assert keys(store.list()) == ["a"]


def test_delete_prefix(store: Store) -> None:
    for k in LAYOUT:
        store.put(k, b"1")
    assert store.delete_prefix("data/a/") == 1
    assert store.delete_prefix("data/a") == 3  # a1, a2/c, ab: a plain string prefix
    assert keys(store.list()) == ["data/b", "other/x", "top"]
    assert store.delete_prefix("missing/") == 0
    with pytest.raises(InvalidKey, match="non-empty prefix"):
        store.delete_prefix("")
    assert keys(store.list()) == ["data/b", "other/x", "top"]


def test_delete_prefix_beyond_one_page(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names = [f"many/{i:04d}" for i in range(1010)] + ["many-not/x", "manz"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, b""), names))
    assert sum(1 for _ in store.list("many/")) == 1010
    assert store.delete_prefix("many/") == 1010
    assert keys(store.list()) == ["many-not/x", "manz"]


def test_unicode_keys(store: Store) -> None:
    names = ["datasets/Zoë 🙂/x.json", "datasets/Zoë 🙂/ü ß.txt", "datasets/日本/a+b=c&d?e#f%20"]
    for k in names:
        store.put(k, k.encode())
    assert keys(store.list("datasets/")) == sorted(names)
    assert keys(store.list("datasets/Zoë")) == sorted(names[:2])
    for k in names:
        assert store.get(k) == k.encode()
        assert store.stat(k).size == len(k.encode())
    assert store.delete_prefix("datasets/Zoë 🙂/") == 2


# -- keys ----------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../x",
    "a/../../b",
    "a/./b",
    "./a",
    "..",
    "a/..",
    "a//b",
    "a/",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "tab\there",
    "del\x7f",
    "é" * 513,  # 1026 UTF-8 bytes
    ".doppel-staging/x",
]
GOOD_KEYS = ["a", "a/b/c", "..a", "a..", "a/.hidden", ".x/y", "a b/c d", "ü/🙂", "x" * 1024, "é" * 512, "a/..b/c."]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_refuses(key: str) -> None:
    with pytest.raises(InvalidKey) as err:
        validate_key(key)
    if key.isprintable() and len(key) < 100:
        assert repr(key) in str(err.value)


def test_validate_key_refuses_non_strings() -> None:
    with pytest.raises(InvalidKey):
        validate_key(b"bytes")  # type: ignore[arg-type]


def test_validate_prefix() -> None:
    for ok in ["", "a", "a/", "a/b/", "data/a", "é" * 511 + "/"]:
        assert validate_prefix(ok) == ok
    for bad in ["/", "/a", "../", "a//", "a/../", "a\\", ".doppel-staging/", ".doppel-staging", "\x00"]:
        with pytest.raises(InvalidKey):
            validate_prefix(bad)


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "a/./b", "k\x01"])
def test_bad_keys_refused_by_every_operation(store: Store, key: str, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"1")
    calls = {
        "put": lambda: store.put(key, b"1"),
        "put stream": lambda: store.put(key, io.BytesIO(b"1")),
        "open_write": lambda: store.open_write(key).__enter__(),
        "put_file": lambda: store.put_file(key, src),
        "get": lambda: store.get(key),
        "open_read": lambda: store.open_read(key).__enter__(),
        "get_file": lambda: store.get_file(key, tmp_path / "dest.bin"),
        "stat": lambda: store.stat(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "list": lambda: list(store.list(key)),
        "delete_prefix": lambda: store.delete_prefix(key),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidKey) as err:
            call()
        assert repr(key) in str(err.value), name
    assert keys(store.list()) == []
    assert not (tmp_path / "dest.bin").exists()
    assert not (tmp_path / "x").exists() and not Path("/b").exists()


# -- open_store ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url, words",
    [
        ("", "file:///"),
        ("   ", "file:///"),
        ("/just/a/path", "file:///"),
        ("ftp://host/x", "unsupported scheme"),
        ("gs://bucket", "unsupported scheme"),
        ("file://host/path", "three slashes"),
        ("file:relative/path", "absolute path"),
        ("file:///tmp/x?opt=1", "no options"),
        ("s3://", "names no bucket"),
        ("s3:///root?endpoint=127.0.0.1:9", "names no bucket"),
        ("s3://bucket", "endpoint=host:port"),
        ("s3://bucket?endpoint=", "endpoint=host:port"),
        ("s3://Bad_Bucket?endpoint=127.0.0.1:9", "not a valid bucket name"),
        ("s3://ab?endpoint=127.0.0.1:9", "not a valid bucket name"),
        ("s3://bucket?endpoint=127.0.0.1:9&bogus=1", "option 'bogus' is not known"),
        ("s3://bucket?endpoint=127.0.0.1:9&endpoint=127.0.0.1:8", "given twice"),
        ("s3://bucket?endpoint=127.0.0.1:9&secure=maybe", "secure must be true or false"),
        ("s3://bucket?endpoint=ftp://127.0.0.1:9", "must be host:port"),
        ("s3://bucket?endpoint=http://127.0.0.1:9/path", "must be host:port"),
        ("s3://bucket?endpoint=https://127.0.0.1:9&secure=false", "contradicts"),
        ("s3://bucket/a/../b?endpoint=127.0.0.1:9", "bad root prefix"),
        ("s3://bucket?endpoint=127.0.0.1:9&access_key=only", "give both access_key and secret_key"),
        ("s3://user:pw@bucket?endpoint=127.0.0.1:9", "access_key=...&secret_key="),
    ],
)
def test_open_store_bad_urls(url: str, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(InvalidArgument) as err:
        open_store(url)
    assert words in str(err.value)
    assert "://" in str(err.value)  # every message shows what a good URL looks like


def test_open_store_errors_hide_secrets() -> None:
    for url in [
        "s3://bucket?endpoint=127.0.0.1:9&secret_key=TOPSECRET&bogus=1",
        "s3://bucket?secret_key=TOPSECRET&session_token=TOKENVALUE",
        "s3://Bad_Bucket?endpoint=127.0.0.1:9&access_key=a&secret_key=TOPSECRET",
        "s3://user:TOPSECRET@bucket?endpoint=127.0.0.1:9",
    ]:
        with pytest.raises(InvalidArgument) as err:
            open_store(url)
        assert "TOPSECRET" not in str(err.value) and "TOKENVALUE" not in str(err.value)
        assert "***" in str(err.value)


def test_open_store_local_creates_folder_with_escaped_path(tmp_path: Path) -> None:
    root = tmp_path / "my store" / "deep"
    s = open_store(root.as_uri())  # as_uri() writes the space as %20
    assert root.is_dir()
    s.put("k", b"1")
    assert (root / "k").read_bytes() == b"1"
    assert open_store(f"file://localhost{root}").get("k") == b"1"


def test_open_store_local_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(InvalidArgument, match="not a folder"):
        open_store((tmp_path / "f").as_uri())


# -- local backend specifics -----------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Store:
    return open_store((tmp_path / "store").as_uri())


def test_local_staging_is_invisible(local: Store, tmp_path: Path) -> None:
    root = tmp_path / "store"
    local.put("a", b"1")
    with pytest.raises(RuntimeError), local.open_write("b") as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    staging = root / ".doppel-staging"
    assert staging.is_dir() and list(staging.iterdir()) == []
    (staging / "left-over.part").write_bytes(b"from a crash")
    assert keys(local.list()) == ["a"]
    assert keys(local.list(".d")) == []
    assert keys(local.list(".doppel")) == []
    with pytest.raises(InvalidKey, match="reserved"):
        local.get(".doppel-staging/left-over.part")
    assert local.delete_prefix("a") == 1
    assert (staging / "left-over.part").exists()


def test_local_list_skips_nothing_else(local: Store, tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / ".hidden").write_bytes(b"1")
    (root / "sub" / ".git").mkdir(parents=True)
    (root / "sub" / ".git" / "HEAD").write_bytes(b"22")
    (root / "empty-folder").mkdir()
    assert [(i.key, i.size) for i in local.list()] == [(".hidden", 1), ("sub/.git/HEAD", 2)]


def test_local_file_and_folder_clash(local: Store, tmp_path: Path) -> None:
    local.put("a/b", b"1")
    with pytest.raises(InvalidArgument, match="other objects live under 'a/'"):
        local.put("a", b"2")
    local.put("f", b"1")
    with pytest.raises(InvalidArgument, match="'f' is an object"):
        local.put("f/g/h", b"2")
    with pytest.raises(InvalidArgument), local.open_write("f/g") as out:
        out.write(b"3")
    assert keys(local.list()) == ["a/b", "f"]
    assert list((tmp_path / "store" / ".doppel-staging").iterdir()) == []


def test_local_symlink_out_of_root_refused(local: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (tmp_path / "store" / "link").symlink_to(outside)
    with pytest.raises(InvalidKey, match="outside the store root"):
        local.get("link/secret")
    with pytest.raises(InvalidKey, match="outside the store root"):
        local.put("link/new", b"x")
    with pytest.raises(InvalidKey, match="outside the store root"):
        list(local.list("link/"))
    assert not (outside / "new").exists()


def test_local_objects_respect_umask(local: Store, tmp_path: Path) -> None:
    local.put("k", b"1")
    mode = (tmp_path / "store" / "k").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_local_url_is_kept(tmp_path: Path) -> None:
    url = (tmp_path / "s").as_uri()
    assert open_store(url).url == url


# -- S3 backend specifics ------------------------------------------------------------


def test_s3_url_hides_the_secret(seaweed, s3_store_url: str) -> None:  # type: ignore[no-untyped-def]
    s = open_store(s3_store_url)
    assert seaweed.secret_key not in s.url and "secret_key" not in s.url
    assert seaweed.endpoint in s.url and "access_key=doppel-test" in s.url
    assert seaweed.secret_key not in repr(s)
    assert "+" in seaweed.secret_key and "+" in s3_store_url  # a raw '+' in the query is not a space


def test_s3_credentials_from_environment(seaweed, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    s = open_store(f"s3://env-creds?endpoint=http://{seaweed.endpoint}")
    s.put("k", b"1")
    assert s.get("k") == b"1"
    seaweed.client().remove_bucket("env-creds")


@pytest.mark.parametrize("which", ["secret", "access"])
def test_s3_wrong_credentials(seaweed, which: str) -> None:  # type: ignore[no-untyped-def]
    access = "nobody" if which == "access" else seaweed.access_key
    url = f"s3://wrong-creds?endpoint={seaweed.endpoint}&secure=false&access_key={access}&secret_key=wrong"
    with pytest.raises(StorageUnavailable) as err:
        open_store(url)
    message = str(err.value)
    assert "credentials" in message and seaweed.endpoint in message
    assert "wrong" not in message.replace("wrong-creds", "")  # the secret is not echoed


def test_s3_no_credentials(seaweed, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(StorageUnavailable, match="no credentials were given"):
        open_store(f"s3://anonymous?endpoint={seaweed.endpoint}&secure=false")


def test_s3_wrong_credentials_after_open(seaweed, s3_store_url: str) -> None:  # type: ignore[no-untyped-def]
    s = open_store(s3_store_url)
    s.put("k", b"1")
    from minio import Minio

    s._client = Minio(seaweed.endpoint, seaweed.access_key, "wrong", secure=False, http_client=s._http)  # type: ignore[attr-defined]
    for call in (lambda: s.get("k"), lambda: s.put("k", b"2"), lambda: list(s.list()), lambda: s.stat("k")):
        with pytest.raises(StorageUnavailable, match="credentials"):
            call()


@pytest.mark.timeout(30)
def test_s3_unreachable_endpoint() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageUnavailable) as err:
        open_store(f"s3://some-bucket?endpoint=127.0.0.1:{port}&secure=false&access_key=a&secret_key=b")
    assert f"127.0.0.1:{port}" in str(err.value) and "reach" in str(err.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forward_later(port: int, target: str, delay: float) -> threading.Event:
    """After `delay` seconds, forward loopback `port` to `target` (host:port) until the event is set."""
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        time.sleep(delay)
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                host, target_port = target.split(":")
                upstream = socket.create_connection((host, int(target_port)))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return stop


@pytest.mark.timeout(60)
def test_a_store_that_starts_late_is_waited_for(seaweed, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    stop = _forward_later(port, seaweed.endpoint, delay=2.0)
    url = (f"s3://late-bucket?endpoint=127.0.0.1:{port}&secure=false"
           f"&access_key={seaweed.access_key}&secret_key={seaweed.secret_key}")
    try:
        with caplog.at_level("WARNING", logger="doppel.store"):
            store = open_store(url, wait_s=30)
        store.put("k", b"v")
        assert store.get("k") == b"v"
    finally:
        stop.set()
    assert any("does not answer yet" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.timeout(60)
def test_waiting_for_a_store_gives_up_with_its_error(caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="doppel.store"), pytest.raises(StorageUnavailable) as err:
        open_store(f"s3://some-bucket?endpoint=127.0.0.1:{port}&secure=false&access_key=a&secret_key=b", wait_s=2)
    assert time.monotonic() - t0 >= 1.5
    assert f"127.0.0.1:{port}" in str(err.value)
    assert [r for r in caplog.records if "does not answer yet" in r.getMessage()], caplog.text


@pytest.mark.timeout(30)
def test_s3_tls_against_plain_http_says_so(seaweed) -> None:  # type: ignore[no-untyped-def]
    url = f"s3://tls-bucket?endpoint={seaweed.endpoint}&access_key=a&secret_key=b"  # secure defaults to true
    with pytest.raises(StorageUnavailable, match="secure=false"):
        open_store(url)


def test_s3_open_read_releases_connection(seaweed, s3_store_url: str) -> None:  # type: ignore[no-untyped-def]
    s = open_store(s3_store_url)
    s.put("big", os.urandom(2 * MiB))
    host, port = seaweed.endpoint.split(":")
    pool = s._http.connection_from_host(host, int(port), scheme="http")  # type: ignore[attr-defined]
    before = pool.num_connections
    for _ in range(10):
        with s.open_read("big") as src:
            src.read(100)
    s.stat("big")
    # Each read gave its connection back; a leak would open a new one per read.
    assert pool.num_connections - before <= 2


def test_s3_root_prefix(seaweed, s3_store_url: str) -> None:  # type: ignore[no-untyped-def]
    bucket_url, _, query = s3_store_url.partition("?")
    rooted = open_store(f"{bucket_url}/team/one?{query}")
    whole = open_store(s3_store_url)
    whole.put("outside", b"0")
    rooted.put("a/b", b"1")
    assert keys(rooted.list()) == ["a/b"]
    assert rooted.stat("a/b").key == "a/b"
    assert keys(whole.list()) == ["outside", "team/one/a/b"]
    assert rooted.delete_prefix("a/") == 1
    assert keys(whole.list()) == ["outside"]
    assert "/team/one?" in rooted.url


def test_s3_creates_bucket_and_reopens(seaweed, s3_store_url: str) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_store_url.split("://")[1].split("?")[0]
    assert not seaweed.client().bucket_exists(bucket)
    open_store(s3_store_url).put("k", b"1")
    assert seaweed.client().bucket_exists(bucket)
    assert open_store(s3_store_url).get("k") == b"1"


def test_s3_multipart_upload_is_used(s3_store_url: str) -> None:
    s = open_store(s3_store_url)
    data = os.urandom(20 * MiB)
    info = s.put("mp", Trickle(data, step=1 << 16))  # type: ignore[arg-type]
    assert info.size == len(data)
    assert s.stat("mp").etag.endswith("-3")  # 8 MiB parts: a multipart etag names its part count
    assert s.get("mp") == data


def test_s3_both_listing_strategies_agree(s3_store_url: str) -> None:
    s = open_store(s3_store_url)
    for k in ["a/b/c", "a/d", "b", "c/ü/🙂", "c/z"]:
        s.put(k, b"1")
    walked = keys(s.list())
    s._server_sorts = True  # type: ignore[attr-defined] # as against MinIO or AWS: one recursive listing
    assert keys(s.list()) == walked == ["a/b/c", "a/d", "b", "c/z", "c/ü/🙂"]
    assert keys(s.list("c/")) == ["c/z", "c/ü/🙂"]


def test_s3_folder_markers_are_not_objects(seaweed, s3_store_url: str) -> None:  # type: ignore[no-untyped-def]
    s = open_store(s3_store_url)
    bucket = s3_store_url.split("://")[1].split("?")[0]
    seaweed.client().put_object(bucket, "made-by-a-tool/", io.BytesIO(b""), 0)
    s.put("made-by-a-tool/x", b"1")
    assert keys(s.list()) == ["made-by-a-tool/x"]
