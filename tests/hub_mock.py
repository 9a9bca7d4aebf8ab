"""A local stand-in for the model Hub, serving what `huggingface_hub` asks of it, and recording
every request so the tests can hold the mock to the library's real traffic.

    with MockHub() as hub:                      # listens on 127.0.0.1, a free port
        hub.add_repo("org/tiny-GGUF", {"tiny-Q4_0.gguf": data, "README.md": b"..."})
        env = hub.env(tmp_path)                 # HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, no token
        ... run llmrun with env ...
        hub.requests                            # [Request(method, path, range, auth, host), ...]

What it implements, as the Hub answers (errors carry X-Error-Code, which the library turns into
its exception classes):
  GET  /api/models/ORG/REPO[/revision/REV][?blobs=true]   model info: sha (the commit), gated,
       siblings with size, blobId and, for LFS files, lfs {sha256, size, pointerSize}
  HEAD /ORG/REPO/resolve/REV/PATH   small files: 200 with ETag (the git blob id), X-Repo-Commit,
       Content-Length; LFS files (*.gguf, *.safetensors): 302 to another host (the CDN: here
       `localhost` for an endpoint on 127.0.0.1), with X-Linked-Etag (the sha256), X-Linked-Size
       and X-Repo-Commit, as the Hub's redirect to its storage does
  GET  the same, and /cdn/SHA256 (the storage host): the bytes, Range requests answered 206
Gated repos: model info is public; files answer 401 GatedRepo without a token and 403 GatedRepo
with a token that has not accepted the license. Private or missing repos: 401 RepoNotFound
without a token, 404 with one. An unknown revision: 404 RevisionNotFound.

Faults to inject: `drop_once[path] = n` sends the headers and n bytes of the file, then closes the
connection (once); `corrupt[path] = True` serves the file with one byte flipped (size and
published sha256 unchanged).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
GOOD_TOKEN = "hf_accepted_the_license"  # a token whose account accepted every gated repo's license


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    gated: bool = False
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # other revisions: name -> commit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: str
    range: str | None
    auth: bool  # an Authorization header was sent
    host: str


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class MockHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.bytes_sent: dict[str, int] = {}  # file path -> body bytes sent, all requests together
        self.drop_once: dict[str, int] = {}
        self.corrupt: dict[str, bool] = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"  # another host name for the same server
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes], **kw) -> Repo:
        commit = hashlib.sha1(repo_id.encode() + b"".join(n.encode() + git_blob_id(d).encode() for n, d in sorted(files.items()))).hexdigest()
        self.repos[repo_id] = repo = Repo(dict(files), commit, **kw)
        return repo

    def env(self, tmp_path, token: str | None = None) -> dict:
        """The environment that points huggingface_hub (and llmrun) at this server."""
        env = {"HF_ENDPOINT": self.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
               "LLMRUN_HOME": str(tmp_path / "llmrun-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": token or ""}
        return env

    def file_requests(self, name: str) -> list[Request]:
        """The GETs that carried a file's bytes (resolve or storage)."""
        return [r for r in self.requests if r.method == "GET" and (r.path.endswith("/" + name) or r.path.startswith("/cdn/"))]

    # --- serving -------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        with self.lock:
            self.requests.append(Request("HEAD" if head else "GET", path, url.query, h.headers.get("Range"),
                                         "Authorization" in h.headers, h.headers.get("Host", "").split(":")[0]))
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            return self._model_info(h, m[1], m[2], token, parse_qs(url.query))
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(h, m[1], m[2], m[3], token, head)
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            for repo in self.repos.values():
                for name, data in repo.files.items():
                    if hashlib.sha256(data).hexdigest() == m[1]:
                        return self._send_file(h, name, data, head, {})
        self._error(h, 404, None, "not found")

    def _error(self, h, status: int, code: str | None, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _repo(self, h, repo_id: str, token: str | None) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or repo.private and token != GOOD_TOKEN:
            # the Hub will not say whether a repo it hides exists: 401 without a token, 404 with one
            self._error(h, 404 if token else 401, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _commit(self, h, repo: Repo, revision: str | None) -> str | None:
        if revision in (None, "main", repo.commit):
            return repo.commit
        if revision in repo.branches:
            return repo.branches[revision]
        self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None

    def _model_info(self, h, repo_id: str, revision: str | None, token: str | None, query: dict) -> None:
        repo = self._repo(h, repo_id, token)
        if repo is None or (commit := self._commit(h, repo, revision)) is None:
            return
        siblings = []
        for name, data in sorted(repo.files.items()):
            s = {"rfilename": name}
            if query.get("blobs") == ["True"] or query.get("blobs") == ["true"]:
                s |= {"size": len(data), "blobId": git_blob_id(data)}
                if name.endswith(LFS_SUFFIXES):
                    s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(s)
        info = {"_id": "0" * 24, "id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": ["gguf"] if any(n.endswith(".gguf") for n in repo.files) else [], "siblings": siblings,
                "createdAt": "2025-01-01T00:00:00.000Z", "lastModified": "2025-01-01T00:00:00.000Z"}
        body = json.dumps(info).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _resolve(self, h, repo_id: str, revision: str, name: str, token: str | None, head: bool) -> None:
        repo = self._repo(h, repo_id, token)
        if repo is None or (commit := self._commit(h, repo, revision)) is None:
            return
        if name not in repo.files:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist on \"{revision}\"")
        if repo.gated and token != GOOD_TOKEN:
            if token is None:
                return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                   "access to it and be authenticated to access it. Please log in.")
            return self._error(h, 403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in "
                               f"the authorized list. Visit {self.url}/{repo_id} to ask for access.")
        data = repo.files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}
        if name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            h.send_response(302)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(len(data)))
            h.send_header("Location", f"{self.cdn}/cdn/{sha}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        self._send_file(h, name, data, head, headers)

    def _send_file(self, h, name: str, data: bytes, head: bool, headers: dict) -> None:
        if self.corrupt.get(name):
            data = bytes([data[0] ^ 0xFF]) + data[1:] if len(data) < 64 else data[:40] + bytes([data[40] ^ 1]) + data[41:]
        start, status = 0, 200
        if not head and (rng := h.headers.get("Range")):
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start, status = int(m[1]), 206
        body = data[start:]
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        with self.lock:
            cut = self.drop_once.pop(name, None)
        if cut is not None:
            body = body[:cut]
        h.wfile.write(body)
        with self.lock:
            self.bytes_sent[name] = self.bytes_sent.get(name, 0) + len(body)
        if cut is not None:
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
