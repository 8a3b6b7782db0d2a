"""A Hugging Face Hub and a plain file server on 127.0.0.1, for download tests without internet.

Serves hub-style `/{org}/{name}/resolve/{revision}/{file}` (HEAD and GET, with the headers
huggingface_hub reads: X-Repo-Commit, ETag = the LFS sha256 for weights or the git blob sha1
for small files, Content-Length, Range) and plain `/files/{name}` URLs (Range too). Faults on
request: a file served corrupted (its ETag still the true hash), a download cut off halfway
once, a path that answers too slowly. Every request is logged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".pth", ".bin")


def hub_etag(name: str, data: bytes) -> str:
    """What the hub sends as ETag: sha256 for LFS files, the git blob sha1 otherwise."""
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 (git's id)


@dataclass
class Repo:
    """A hub repo at one commit."""

    commit: str
    files: dict[str, bytes]

    @classmethod
    def from_folder(cls, folder: Path, commit_seed: str) -> Repo:
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        return cls(hashlib.sha1(commit_seed.encode()).hexdigest(), files)  # noqa: S324


@dataclass
class FakeHub:
    """The server's content, faults and request log."""

    repos: dict[str, Repo] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # /files/<name>
    corrupt: set[str] = field(default_factory=set)  # "<repo>/<file>" or "files/<name>"
    cut_once: set[str] = field(default_factory=set)  # the same keys: half, then close, once
    slow: set[str] = field(default_factory=set)  # these keys sleep 3 s before answering
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range)

    def start(self) -> str:
        """Serve on an ephemeral loopback port; returns the base URL."""
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                hub.log.append((self.command, self.path, self.headers.get("Range", "")))
                found = hub.lookup(self.path)
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                key, data, headers = found
                if key in hub.slow:
                    time.sleep(3.0)
                served = (
                    bytes(b ^ 0xFF for b in data[:64]) + data[64:] if key in hub.corrupt else data
                )
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                chunk = served[start:]
                if key in hub.cut_once and self.command == "GET":
                    hub.cut_once.discard(key)
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Shut the server down (later requests fail to connect)."""
        self.server.shutdown()
        self.server.server_close()

    def lookup(self, path: str) -> tuple[str, bytes, dict[str, str]] | None:
        """(fault key, content, headers) for a request path, or None for a 404."""
        path = path.split("?")[0]
        if path.startswith("/files/"):
            name = path[len("/files/") :]
            return (f"files/{name}", self.files[name], {}) if name in self.files else None
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        if repo is None or revision not in ("main", repo.commit) or name not in repo.files:
            return None
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{hub_etag(name, data)}"'}
        return f"{repo_id}/{name}", data, headers

    def requested(self, fragment: str) -> list[tuple[str, str, str]]:
        """Logged GET requests whose path contains `fragment`."""
        return [entry for entry in self.log if entry[0] == "GET" and fragment in entry[1]]
