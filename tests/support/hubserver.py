"""A local stand-in for the Hugging Face Hub's HTTP API, so base-model downloads are tested without internet.

`HubServer` is a threaded HTTP server on a loopback port that answers what `huggingface_hub` (the
installed 2.x, on httpx2) asks of the Hub when it reads model metadata and downloads files:

- `GET /api/models/{repo_id}` and `/api/models/{repo_id}/revision/{rev}` (`model_info`, `repo_info`):
  `id`, `sha`, `siblings` (`rfilename`; `size`, `blobId`, `lfs` with `?blobs=true`), `gated`,
  `cardData` (README front matter, `license` from `add_repo`), `config` (`architectures`,
  `model_type`, `tokenizer_config`), `safetensors` (parameters per dtype, read from the headers),
  `library_name`, `pipeline_tag`, `tags`.
- `GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=` (`list_repo_tree`, `list_repo_files`,
  and `snapshot_download`, which lists the tree of the resolved commit), one page.
- `HEAD`/`GET /{repo_id}/resolve/{rev}/{filename}` (`hf_hub_download`, `get_hf_file_metadata`):
  `X-Repo-Commit`, a quoted `ETag` (git blob sha1), `Content-Length`, `Accept-Ranges`, `Range`
  (206 + `Content-Range`, 416). LFS files (weights by suffix, anything over 10 MiB) answer as the
  Hub does: 302 to a "CDN" on another origin (`http://localhost:PORT/_cdn/...`, the same server
  under another host name, so the client neither follows it on HEAD nor sends it the token) with
  `X-Linked-Etag` (sha256) and `X-Linked-Size`; `lfs_redirect=False` serves them in place.
- Errors as `hf_raise_for_status` reads them, by `X-Error-Code`: unknown repo 404 `RepoNotFound`,
  unknown revision 404 `RevisionNotFound`, missing file 404 `EntryNotFound` (with `X-Repo-Commit`),
  a gated repo's files without `Authorization` 401 `GatedRepo` (403 with a token not in `tokens`).
  Metadata and file lists of a gated repo stay public, as on the Hub.
- `drop(...)`/`drop_once(...)`: the next GET of a file sends its headers and part of its body, then
  closes the connection. Every request is logged (`requests`, `hits`, `downloads(...)`).

Pointing huggingface_hub at it: the library reads `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE` once, on
import, into `huggingface_hub.constants` (`ENDPOINT`, `HUGGINGFACE_CO_URL_TEMPLATE` that `hf_hub_url`
builds from, `HF_HUB_CACHE`, ...), and the module-level `huggingface_hub.model_info` & co. are bound
methods of an `HfApi` made on import. So a subprocess gets `hub_env(...)` as its environment, and the
test process (where tests/conftest.py sets HF_HUB_OFFLINE=1 and huggingface_hub may be imported
already) calls `point_hub_at(monkeypatch, server, home)`, which patches those constants and the
default `HfApi`. `endpoint=` on `HfApi`, `hf_hub_download` and `snapshot_download` also works
without any patching, but transformers' `from_pretrained` has no such argument.

Resuming, in this huggingface_hub version: only inside one call. `http_get` streams into a
process-unique `<etag>.<random>.incomplete` file that is deleted when the call fails, so a second
call starts again from byte 0. Within a call, a connection that breaks mid-body
(`httpx2.RemoteProtocolError`) is retried up to 5 times after a 1 s sleep, with
`Range: bytes=N-` where N is what was written to disk, and N only moves in whole
`constants.DOWNLOAD_CHUNK_SIZE` (10 MiB) chunks: a file dropped before its first 10 MiB is fetched
again from 0 by a plain GET. Tests that want a Range request lower that chunk size.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

if TYPE_CHECKING:  # the stand-in also runs alone in a container (`main`), where pytest is not installed
    import pytest

# Suffixes the Hub's default .gitattributes stores in LFS; bigger files go to LFS whatever their name.
LFS_SUFFIXES = frozenset(
    {".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib", ".mlmodel", ".model", ".msgpack", ".npy"}
    | {".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite"}
    | {".tgz", ".wasm", ".xz", ".zip", ".zst"}
)
LFS_MIN_SIZE = 10 * 1024 * 1024
UNSUPPORTED_MODEL_TYPE = "doppel-unknown"  # a model type transformers has never heard of
UNSUPPORTED_ARCHITECTURE = "DoppelUnknownForCausalLM"

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHORT_COMMIT = re.compile(r"[0-9a-f]{7,39}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_FRONT_MATTER = re.compile(rb"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One file of one revision, with the ids the Hub gives it."""

    path: str
    data: bytes
    sha256: str
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer git stores in place of an LFS file."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def blob_id(self) -> str:
        """The git blob id: of the pointer for an LFS file, of the content otherwise (the Hub's ETag of a small file)."""
        return _git_blob_sha1(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """What the client keys its cache by: sha256 for LFS, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_id


def make_blob(path: str, data: bytes | str) -> Blob:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    lfs = Path(path).suffix.lower() in LFS_SUFFIXES or len(raw) > LFS_MIN_SIZE
    return Blob(path, raw, hashlib.sha256(raw).hexdigest(), lfs)


@dataclass
class Repo:
    """A model repo: commits (sha -> path -> blob), refs (branch -> sha), and who may read its files."""

    repo_id: str
    default_branch: str
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool | str = False  # False, or the Hub's "auto" / "manual" (True means "manual")
    tokens: frozenset[str] | None = None  # tokens granted access to a gated repo; None: any token
    license: str | None = "apache-2.0"
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def resolve(self, revision: str) -> str | None:
        """The commit a branch name, full sha or unique short sha names; None when it names none."""
        revision = revision.removeprefix("refs/heads/")
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        if _SHORT_COMMIT.fullmatch(revision):
            found = [sha for sha in self.commits if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None


@dataclass
class Request:
    """One request the server answered, for tests to assert on."""

    method: str
    path: str  # the URL path as sent (still quoted), without the query
    query: str = ""
    kind: str = "unknown"  # "info", "tree", "resolve", "cdn" or "unknown"
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None
    range: str | None = None  # the Range header, as sent
    authorized: bool = False  # an Authorization header came with it
    status: int = 0
    body_bytes: int = 0  # bytes of body actually written
    dropped: bool = False  # the connection was closed mid-body on purpose

    @property
    def range_start(self) -> int | None:
        """N of a `bytes=N-...` Range header; None without one."""
        m = _RANGE.fullmatch(self.range or "")
        return int(m.group(1)) if m and m.group(1) else None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled httpx2 client expects
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests` instead
        pass

    def do_GET(self) -> None:
        self.server.hub._handle(self, "GET")

    def do_HEAD(self) -> None:
        self.server.hub._handle(self, "HEAD")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.hub._handle(self, "POST")


class HubServer:
    """The Hub's HTTP API for the repos a test adds, on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", cdn_host: str = "localhost", lfs_redirect: bool = True, port: int = 0):
        self.host, self.cdn_host, self.lfs_redirect, self._port = host, cdn_host, lfs_redirect, port
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._drops: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Condition()
        self._in_flight = 0  # requests being answered: logged once answered
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> HubServer:
        self._httpd = _HTTPServer((self.host, self._port), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        """What HF_ENDPOINT (or `endpoint=`) should be."""
        return f"http://{self.host}:{self.port}"

    @property
    def cdn(self) -> str:
        """The origin LFS files are redirected to: this server under another name, so another origin for the client."""
        return f"http://{self.cdn_host}:{self.port}"

    # -- content

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        *,
        revision_sha: str | None = None,
        branch: str = "main",
        gated: bool | str = False,
        tokens: Iterable[str] | None = None,
        license: str | None = "apache-2.0",
        extra_revisions: Mapping[str, Mapping[str, bytes | str]] | None = None,
    ) -> str:
        """(Re)create `repo_id` with `files` at the head of `branch`; the sha of that commit.

        `extra_revisions` adds more commits: a 40-hex key is a commit reachable only by its sha,
        any other key a branch of that name.
        """
        self.repos[repo_id] = Repo(
            repo_id,
            default_branch=branch,
            gated="manual" if gated is True else gated,
            tokens=frozenset(tokens) if tokens is not None else None,
            license=license,
        )
        for name, more in (extra_revisions or {}).items():
            if _COMMIT.fullmatch(name):
                self.add_revision(repo_id, more, sha=name)
            else:
                self.add_revision(repo_id, more, branch=name)
        return self.add_revision(repo_id, files, sha=revision_sha, branch=branch)

    def add_revision(
        self, repo_id: str, files: Mapping[str, bytes | str], *, sha: str | None = None, branch: str | None = None
    ) -> str:
        """A new commit of `files` (all of them: nothing is inherited), moving `branch` to it if given; its sha."""
        repo = self.repos[repo_id]
        blobs = {path: make_blob(path, data) for path, data in files.items()}
        if sha is None:
            listing = sorted((p, b.blob_id) for p, b in blobs.items())
            seed = json.dumps([repo_id, branch, len(repo.commits), listing])
            sha = hashlib.sha1(seed.encode()).hexdigest()
        if not _COMMIT.fullmatch(sha):
            raise ValueError(f"not a full commit sha: {sha!r}")
        repo.commits[sha] = blobs
        if branch is not None:
            repo.refs[branch] = sha
        return sha

    def sha(self, repo_id: str, revision: str = "main") -> str:
        """The commit `revision` of `repo_id` resolves to."""
        sha = self.repos[repo_id].resolve(revision)
        assert sha is not None, f"{repo_id} has no revision {revision!r}"
        return sha

    # -- failure modes and observation

    def drop(self, repo_id: str, filename: str, after_bytes: int, times: int = 1) -> None:
        """The next `times` GETs of that file's bytes send the headers and `after_bytes` of the body, then hang up."""
        with self._lock:
            self._drops.setdefault((repo_id, filename), []).extend([after_bytes] * times)

    def drop_once(self, repo_id: str, filename: str, after_bytes: int) -> None:
        self.drop(repo_id, filename, after_bytes, times=1)

    def _take_drop(self, repo_id: str, filename: str) -> int | None:
        with self._lock:
            queue = self._drops.get((repo_id, filename))
            return queue.pop(0) if queue else None

    @property
    def hits(self) -> Counter[str]:
        """Requests per "METHOD /path" (path as sent, no query)."""
        with self._lock:
            return Counter(f"{r.method} {r.path}" for r in self.requests)

    def log(self, *, kind: str | None = None, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (kind is None or r.kind == kind) and (method is None or r.method == method)]

    def downloads(self, repo_id: str, filename: str) -> list[Request]:
        """The GETs that sent (or began to send) that file's bytes, from /resolve or the CDN, in order."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET"
                and r.repo_id == repo_id
                and r.filename == filename
                and r.kind in ("resolve", "cdn")
                and r.status in (200, 206)
            ]

    def unhandled(self) -> list[Request]:
        """Requests for routes the stand-in does not know: what a new client version started to ask for."""
        return self.log(kind="unknown")

    def clear_log(self) -> None:
        """Forget what was logged, once the requests being answered are (a client may have its answer
        before the handler logs it)."""
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=10)
            self.requests.clear()

    # -- HTTP

    def _handle(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        rec = Request(method, parts.path, parts.query, authorized=bool(h.headers.get("Authorization")))
        head = method == "HEAD"
        with self._lock:
            self._in_flight += 1
        try:
            path = parts.path
            if method == "POST":
                self._error(h, rec, 404, None, "Not handled by the Hub stand-in", head=False)
            elif path.startswith("/api/models/"):
                self._api_model(h, rec, path.removeprefix("/api/models/"), parse_qs(parts.query), head)
            elif path.startswith(("/api/datasets/", "/api/spaces/")):
                rec.kind = "info"
                self._error(h, rec, 404, "RepoNotFound", "Repository not found", head=head)
            elif path.startswith("/_cdn/"):
                self._cdn(h, rec, path.removeprefix("/_cdn/"), parse_qs(parts.query), head)
            elif "/resolve/" in path and not path.startswith("/api/"):
                self._resolve(h, rec, path, head)
            else:
                self._error(h, rec, 404, None, "Not handled by the Hub stand-in", head=head)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client hung up first
        finally:
            with self._lock:
                self.requests.append(rec)
                self._in_flight -= 1
                self._lock.notify_all()

    def _send(self, h: _Handler, rec: Request, status: int, headers: Mapping[str, str], body: bytes, head: bool) -> None:
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        rec.status = status
        if not head:
            h.wfile.write(body)
            rec.body_bytes = len(body)

    def _error(
        self, h: _Handler, rec: Request, status: int, code: str | None, message: str, *, head: bool, commit: str | None = None
    ) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        self._send(h, rec, status, headers, json.dumps({"error": message}).encode(), head)

    def _json(self, h: _Handler, rec: Request, payload: Any, head: bool) -> None:
        self._send(h, rec, 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode(), head)

    def _repo_or_error(self, h: _Handler, rec: Request, head: bool) -> Repo | None:
        repo = self.repos.get(rec.repo_id or "")
        if repo is None:
            self._error(h, rec, 404, "RepoNotFound", "Repository not found", head=head)
        return repo

    def _commit_or_error(self, h: _Handler, rec: Request, repo: Repo, head: bool) -> str | None:
        sha = repo.resolve(rec.revision or repo.default_branch)
        if sha is None:
            self._error(h, rec, 404, "RevisionNotFound", f"Invalid rev id: {rec.revision}", head=head)
        return sha

    def _api_model(self, h: _Handler, rec: Request, rest: str, query: dict[str, list[str]], head: bool) -> None:
        sub = ""
        if "/tree/" in rest:
            rec.kind = "tree"
            repo_part, _, after = rest.partition("/tree/")
            rev_part, _, sub = after.partition("/")
            rec.revision, sub = unquote(rev_part), unquote(sub).strip("/")
        elif "/revision/" in rest:
            rec.kind = "info"
            repo_part, _, rev_part = rest.partition("/revision/")
            rec.revision = unquote(rev_part)
        elif rest.count("/") <= 1:
            rec.kind, repo_part = "info", rest
        else:
            self._error(h, rec, 404, None, "Not handled by the Hub stand-in", head=head)
            return
        rec.repo_id = unquote(repo_part)
        if (repo := self._repo_or_error(h, rec, head)) is None or (sha := self._commit_or_error(h, rec, repo, head)) is None:
            return
        if rec.kind == "info":
            self._json(h, rec, self.model_info_json(repo, sha, blobs=_flag(query, "blobs")), head)
            return
        entries = _tree(repo.commits[sha], sub, recursive=_flag(query, "recursive"))
        if entries is None:
            self._error(h, rec, 404, "EntryNotFound", f"{sub} does not exist on {rec.revision}", head=head, commit=sha)
            return
        if _flag(query, "expand"):
            for entry in entries:
                entry["lastCommit"] = {"id": sha, "title": "Upload", "date": repo.created.isoformat()}
        self._json(h, rec, entries, head)

    def _resolve(self, h: _Handler, rec: Request, path: str, head: bool) -> None:
        rec.kind = "resolve"
        repo_part, _, after = path.partition("/resolve/")
        rev_part, _, file_part = after.partition("/")
        rec.repo_id, rec.revision, rec.filename = unquote(repo_part.lstrip("/")), unquote(rev_part), unquote(file_part)
        if (repo := self._repo_or_error(h, rec, head)) is None:
            return
        if repo.gated:
            token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not token:
                message = f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated to access it."
                self._error(h, rec, 401, "GatedRepo", message + " Please log in.", head=head)
                return
            if repo.tokens is not None and token not in repo.tokens:
                message = f"Access to model {repo.repo_id} is restricted and you are not in the authorized list."
                self._error(h, rec, 403, "GatedRepo", message, head=head)
                return
        if (sha := self._commit_or_error(h, rec, repo, head)) is None:
            return
        blob = repo.commits[sha].get(rec.filename)
        if blob is None:
            self._error(h, rec, 404, "EntryNotFound", "Entry not found", head=head, commit=sha)
            return
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Disposition": _disposition(blob.path)}
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)}
            if self.lfs_redirect:
                location = f"{self.cdn}/_cdn/{blob.sha256}?" + urlencode({"repo": repo.repo_id, "file": blob.path})
                headers |= {"Location": location, "ETag": f'"{blob.sha256}"', "Content-Type": "text/plain; charset=utf-8"}
                self._send(h, rec, 302, headers, f"Found. Redirecting to {location}".encode(), head)
                return
        self._serve(h, rec, blob, headers | {"ETag": f'"{blob.etag}"'}, head)

    def _cdn(self, h: _Handler, rec: Request, sha256: str, query: dict[str, list[str]], head: bool) -> None:
        rec.kind = "cdn"
        rec.repo_id, rec.filename = (query.get("repo") or [""])[0], (query.get("file") or [""])[0]
        repo = self.repos.get(rec.repo_id)
        found = [b for files in (repo.commits.values() if repo else ()) for b in files.values() if b.sha256 == sha256]
        if not found:
            self._send(h, rec, 404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>", head)
            return
        headers = {"Accept-Ranges": "bytes", "Content-Disposition": _disposition(found[0].path), "ETag": f'"{sha256}"'}
        self._serve(h, rec, found[0], headers, head)

    def _serve(self, h: _Handler, rec: Request, blob: Blob, headers: dict[str, str], head: bool) -> None:
        """The file's bytes, or the part a Range asks for; cut short when a drop is armed for it."""
        rec.range = h.headers.get("Range")
        size, start, end, status = blob.size, 0, blob.size - 1, 200
        headers = {"Content-Type": _content_type(blob.path)} | headers
        m = _RANGE.fullmatch(rec.range.strip()) if rec.range else None
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
            else:
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                self._send(h, rec, 416, {"Content-Range": f"bytes */{size}"}, b"", head)
                return
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
        body = blob.data[start : end + 1]
        drop = None if head else self._take_drop(rec.repo_id or "", rec.filename or "")
        if drop is None:
            self._send(h, rec, status, headers, body, head)
            return
        self._send(h, rec, status, headers | {"Content-Length": str(len(body))}, b"", True)
        rec.status, rec.dropped = status, True
        h.wfile.write(body[:drop])
        rec.body_bytes = min(drop, len(body))
        h.close_connection = True  # the server then shuts the socket down: the client sees the body end early

    @staticmethod
    def model_info_json(repo: Repo, sha: str, *, blobs: bool = False) -> dict[str, Any]:
        """The JSON of `GET /api/models/{id}/revision/{sha}` (`?blobs=true`: with sizes and blob ids)."""
        files = repo.commits[sha]
        siblings = []
        for path in sorted(files):
            blob = files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling |= {"size": blob.size, "blobId": blob.blob_id}
                if blob.lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        card = _front_matter(files.get("README.md"))
        if repo.license is not None:
            card.setdefault("license", repo.license)
        config = _json_file(files.get("config.json"))
        summary: dict[str, Any] = {k: config[k] for k in ("architectures", "model_type") if k in config}
        tokenizer_config = _json_file(files.get("tokenizer_config.json"))
        special = {k: v for k, v in tokenizer_config.items() if k in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template")}
        if special:
            summary["tokenizer_config"] = special
        causal = any(str(a).endswith("ForCausalLM") or str(a).endswith("LMHeadModel") for a in summary.get("architectures", []))
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": sha,
            "lastModified": repo.created.isoformat().replace("+00:00", "Z"),
            "createdAt": repo.created.isoformat().replace("+00:00", "Z"),
            "private": False,
            "disabled": False,
            "gated": repo.gated,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(b.size for b in files.values()),
        }
        if "config.json" in files:
            info |= {"library_name": "transformers", "config": summary}
            info["tags"].append("transformers")
        if causal:
            info["pipeline_tag"] = "text-generation"
            info["transformersInfo"] = {
                "auto_model": "AutoModelForCausalLM",
                "pipeline_tag": "text-generation",
                "processor": "AutoTokenizer",
            }
        if parameters := _safetensors_parameters(files):
            info["safetensors"] = {"parameters": parameters, "total": sum(parameters.values())}
            info["tags"].append("safetensors")
        if "model_type" in summary:
            info["tags"].append(summary["model_type"])
        if card:
            info["cardData"] = card
            if "license" in card:
                info["tags"].append(f"license:{card['license']}")
        return info


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return (query.get(name) or ["false"])[0].lower() in ("1", "true", "yes")


def _tree(files: Mapping[str, Blob], sub: str, *, recursive: bool) -> list[dict[str, Any]] | None:
    """Tree entries under folder `sub` ("" for the root) as the Hub lists them; None when `sub` is no folder."""
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    if sub and sub not in folders:
        return None
    prefix = f"{sub}/" if sub else ""
    entries: list[dict[str, Any]] = []
    for path in sorted(folders | set(files)):
        if not path.startswith(prefix) or (not recursive and "/" in path[len(prefix) :]):
            continue
        if path in folders:
            entries.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path})
            continue
        blob = files[path]
        entry: dict[str, Any] = {"type": "file", "oid": blob.blob_id, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        entries.append(entry)
    return entries


def _disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"


def _content_type(path: str) -> str:
    if path.endswith((".json", ".md", ".txt", ".jinja", ".py", ".yaml", ".yml")):
        return "text/plain; charset=utf-8"
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _json_file(blob: Blob | None) -> dict[str, Any]:
    if blob is None:
        return {}
    try:
        value = json.loads(blob.data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _front_matter(blob: Blob | None) -> dict[str, Any]:
    m = _FRONT_MATTER.match(blob.data) if blob is not None else None
    if m is None:
        return {}
    with suppress(yaml.YAMLError):
        value = yaml.safe_load(m.group(1))
        return value if isinstance(value, dict) else {}
    return {}


def _safetensors_parameters(files: Mapping[str, Blob]) -> dict[str, int]:
    """Parameters per dtype over the repo's .safetensors files, from their JSON headers (as the Hub reports them)."""
    counts: Counter[str] = Counter()
    for blob in files.values():
        if not blob.path.endswith(".safetensors") or blob.size < 8:
            continue
        (length,) = struct.unpack("<Q", blob.data[:8])
        try:
            header = json.loads(blob.data[8 : 8 + length])
        except ValueError:
            continue
        for name, tensor in header.items():
            if name != "__metadata__":
                n = 1
                for dim in tensor["shape"]:
                    n *= dim
                counts[tensor["dtype"]] += n
    return dict(counts)


# -- pointing huggingface_hub at a server


def hub_env(server: HubServer, home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a subprocess whose huggingface_hub talks to `server`, caches under `home`, has no token."""
    env = dict(os.environ if base is None else base)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_OIDC_RESOURCE"):
        env.pop(name, None)
    env |= {
        "HF_ENDPOINT": server.endpoint,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    return env


def point_hub_at(monkeypatch: pytest.MonkeyPatch, server: HubServer, home: Path) -> None:
    """Make this process's huggingface_hub (and transformers) use `server`, online, with a cache under `home` and no token.

    Patches what huggingface_hub froze on import, and the environment for subprocesses; all undone at teardown.
    """
    from huggingface_hub import constants, hf_api

    for name, value in hub_env(server, home, base={}).items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    endpoint = server.endpoint
    patches: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, patched in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, patched)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # behind huggingface_hub.model_info & co.


# -- a tiny model repo

_TEXTS = [
    "Bob: what are you doing tonight",
    "Alice: haha yes totally",
    "Bob: did you see the match",
    "Alice: omg no way",
    "Bob: are you coming tomorrow",
    "Alice: lol same here",
]
_tiny_cache: dict[str, bytes] = {}


def tiny_repo_files(tmp_path: Path, *, unsupported: bool = False) -> dict[str, bytes]:
    """The files of a tiny random GPT-2 (safetensors) and its tokenizer, as `save_pretrained` writes them.

    `unsupported=True`: config.json names a model type and architecture transformers does not know.
    The model is made once per process (importing torch and building it takes seconds) and is the
    same every time (`tiny_model(..., seed=0, block_size=128)`).
    """
    if not _tiny_cache:
        from doppel.tiny import tiny_model

        model, tokenizer = tiny_model(_TEXTS, seed=0, block_size=128)
        folder = tmp_path / "tiny-model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _tiny_cache.update({p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()})
    files = dict(_tiny_cache)
    if unsupported:
        config = json.loads(files["config.json"])
        config |= {"model_type": UNSUPPORTED_MODEL_TYPE, "architectures": [UNSUPPORTED_ARCHITECTURE]}
        files["config.json"] = json.dumps(config, indent=2).encode()
    return files


def iter_files(folder: Path) -> Iterator[tuple[str, bytes]]:
    """(repo path, bytes) of every file under `folder`, following the snapshot's symlinks into blobs."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path.relative_to(folder).as_posix(), path.read_bytes()


def main(argv: list[str] | None = None) -> None:
    """Serve folders as Hub repos until killed: `python hubserver.py --port 8080 --cdn-host hub ID=FOLDER...`
    (the live compose test runs it as a container of the stack)."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--cdn-host", default="localhost", help="the host name the stack reaches this server by")
    parser.add_argument("repos", nargs="+", help="REPO_ID=FOLDER")
    args = parser.parse_args(argv)
    server = HubServer(host="0.0.0.0", cdn_host=args.cdn_host, port=args.port).start()
    for spec in args.repos:
        repo_id, _, folder = spec.partition("=")
        server.add_repo(repo_id, dict(iter_files(Path(folder))))
    print(f"serving {', '.join(server.repos)} at {server.endpoint}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
