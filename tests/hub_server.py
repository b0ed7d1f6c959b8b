"""A small Hugging Face Hub-compatible HTTP server for offline tests (127.0.0.1 only).

It implements the endpoints ``huggingface_hub`` (and through it timm / transformers) uses to push and load
models: repo creation, YAML validation, preupload (every file answered ``regular``, so contents arrive base64
inside the NDJSON commit and no LFS/Xet is involved), commits, repo info, tree listing and ``resolve``
(HEAD/GET with ``X-Repo-Commit`` and ``ETag``; missing files/repos/revisions get a 404 with the
``X-Error-Code`` the client maps to ``EntryNotFoundError`` / ``RepositoryNotFoundError`` /
``RevisionNotFoundError``). Blobs are stored content-addressed in a temporary directory; repo metadata lives in
memory. It is a test fixture, not part of the library.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub", "start_local_hub"]

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _git_blob_sha(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub uses as oid/ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Commit:
    sha: str
    title: str
    files: dict[str, str]  # path -> blob sha
    date: float


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    commits: list[_Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit sha

    def find(self, revision: str) -> _Commit | None:
        revision = unquote(revision)
        sha = self.branches.get(revision, revision)
        for commit in self.commits:
            if commit.sha == sha:
                return commit
        return None


class LocalHub:
    """State of the local Hub: repos, commits and the blob directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests that inspect traffic
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ storage
    def _new_commit(self, repo: _Repo, files: dict[str, str], title: str, branch: str = "main") -> _Commit:
        seed = json.dumps([repo.repo_id, sorted(files.items()), title, time.time_ns(), len(repo.commits)])
        commit = _Commit(hashlib.sha1(seed.encode()).hexdigest(), title, files, time.time())
        repo.commits.append(commit)
        repo.branches[branch] = commit.sha
        return commit

    def put_blob(self, data: bytes) -> str:
        sha = _git_blob_sha(data)
        path = self.blobs / sha
        if not path.exists():
            tmp = path.with_suffix(".tmp%d" % threading.get_ident())
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def read_blob(self, sha: str) -> bytes:
        return (self.blobs / sha).read_bytes()

    def create_repo(self, repo_id: str, repo_type: str = "model") -> bool:
        """Create an empty repo (one initial commit with ``.gitattributes``); False if it already exists."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return False
            repo = _Repo(repo_id, repo_type)
            blob = self.put_blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
            self._new_commit(repo, {".gitattributes": blob}, "initial commit")
            self.repos[(repo_type, repo_id)] = repo
            return True

    def reset(self) -> None:
        """Forget every repo (blobs stay; they are content-addressed)."""
        with self.lock:
            self.repos.clear()
            self.requests.clear()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        shutil.rmtree(self.root, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: LocalHub  # set on the subclass made by start_local_hub

    def log_message(self, format: str, *args) -> None:  # silence the default stderr log
        pass

    # ------------------------------------------------------------------ helpers
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._json(status, {"error": message}, extra)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _repo(self, kind: str, repo_id: str) -> _Repo | None:
        return self.hub.repos.get((_TYPES[kind], repo_id))

    def _info(self, repo: _Repo, commit: _Commit) -> dict:
        siblings = [{"rfilename": p, "size": (self.hub.blobs / s).stat().st_size} for p, s in sorted(commit.files.items())]
        return {
            "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.sha, "private": False, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
        }

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        with self.hub.lock:
            self.hub.requests.append((self.command, path))
        if self.command == "POST" and path == "/api/repos/create":
            return self._create_repo()
        if self.command == "POST" and path == "/api/validate-yaml":
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        match = _API.match(path)
        if match:
            return self._api(*match.groups(), query)
        match = _RESOLVE.match(url.path)  # keep the revision quoted (it may contain '/')
        if match and self.command in ("GET", "HEAD"):
            kind, repo_id, revision, file_path = match.groups()
            return self._resolve(kind or "models", unquote(repo_id), unquote(revision), unquote(file_path))
        self._error(404, None, f"local hub: no route for {self.command} {path}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self._dispatch()

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        name, org = payload.get("name"), payload.get("organization") or "user"
        repo_type = payload.get("type") or "model"
        repo_id = f"{org}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if not self.hub.create_repo(repo_id, repo_type):
            message = "You already created this model repo"
            return self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
        self._json(200, {"url": url, "name": repo_id})

    def _api(self, kind: str, repo_id: str, rest: str | None, query: dict) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            self._body()
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        rest = rest or ""
        op, _, tail = rest.partition("/")
        if self.command == "GET" and op in ("", "revision"):
            commit = repo.find(tail or "main")
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {tail}")
            return self._json(200, self._info(repo, commit))
        if self.command == "GET" and op == "tree":
            revision, _, folder = tail.partition("/")
            return self._tree(repo, revision, folder, query)
        if self.command == "POST" and op == "preupload":
            return self._preupload(repo, tail)
        if self.command == "POST" and op == "commit":
            return self._commit(repo, tail)
        self._body()
        self._error(404, None, f"local hub: unsupported {self.command} /api/{kind}/{repo_id}/{rest}")

    def _tree(self, repo: _Repo, revision: str, folder: str, query: dict) -> None:
        commit = repo.find(revision or "main")
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        folder = folder.strip("/")
        prefix = f"{folder}/" if folder else ""
        entries, dirs = [], set()
        for path, sha in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "path": path, "oid": sha, "size": (self.hub.blobs / sha).stat().st_size})
        if folder and not entries and not dirs:
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in sorted(dirs)]
        self._json(200, entries)

    def _preupload(self, repo: _Repo, revision: str) -> None:
        payload = json.loads(self._body() or b"{}")
        commit = repo.find(revision or "main")
        existing = commit.files if commit else {}
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": existing.get(f["path"])}
            for f in payload.get("files", [])
        ]
        self._json(200, {"files": files, "commitOid": commit.sha if commit else None})

    def _commit(self, repo: _Repo, revision: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        branch = unquote(revision or "main")
        with self.hub.lock:
            parent = repo.find(branch)
            if parent is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            files, title = dict(parent.files), "commit"
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "header":
                    title = value.get("summary") or title
                elif key == "file":
                    if value.get("encoding", "base64") != "base64":
                        return self._error(400, None, f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = self.hub.put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if value["path"] not in files:
                        return self._error(404, "EntryNotFound", "A file with this name doesn't exist")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: s for p, s in files.items() if not p.startswith(folder)}
                else:
                    return self._error(400, None, f"local hub supports only regular uploads, got {key!r}")
            target = branch if branch in repo.branches or branch == "main" else "main"
            commit = self.hub._new_commit(repo, files, title, target)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(200, {
            "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.sha}",
            "commitOid": commit.sha, "success": True, "pullRequestUrl": None,
        })

    def _resolve(self, kind: str, repo_id: str, revision: str, file_path: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        commit = repo.find(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        sha = commit.files.get(file_path)
        headers = {"X-Repo-Commit": commit.sha}
        if sha is None:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist on {revision}", headers)
        data = self.hub.read_blob(sha)
        headers.update({"ETag": f'"{sha}"', "Accept-Ranges": "none"})
        self._send(200, data, headers, ctype="application/octet-stream")


def start_local_hub() -> LocalHub:
    """Start a Hub-compatible server on 127.0.0.1 (free port) in a daemon thread; storage in a temp dir."""
    hub = LocalHub(Path(tempfile.mkdtemp(prefix="dclszoo-hub-")))
    handler = type("LocalHubHandler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.server = server
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="local-hub", daemon=True).start()
    return hub
