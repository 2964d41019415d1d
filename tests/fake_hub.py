"""A Hugging Face hub for the tests: a real HTTP server on 127.0.0.1 and a
free port that serves one model folder as a hub repository, the way
``huggingface_hub`` downloads from the real one (``HF_ENDPOINT`` points a
process at it). It answers the repository's metadata, each file's HEAD
(size, ETag, commit) and GET, and 404 for files the folder lacks, and it
counts the files it sent."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections import Counter
from pathlib import Path

from mpd_server import free_port

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """``with FakeHub(folder, "org/name") as hub:`` serves ``folder`` at
    ``hub.url``; ``hub.sent`` counts the files downloaded, by name. A file
    named in ``hub.cut`` is broken off: half of it is sent, then the
    connection closes, as a network that drops does."""

    def __init__(self, folder: str | Path, repo: str) -> None:
        self.folder = Path(folder)
        self.repo = repo
        self.sent: Counter[str] = Counter()
        self.cut: set[str] = set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request, body: bool) -> None:
        path = request.path.split("?", 1)[0]
        if path == f"/api/models/{self.repo}" or path.startswith(f"/api/models/{self.repo}/revision/"):
            siblings = [{"rfilename": p.name} for p in sorted(self.folder.iterdir())]
            data = json.dumps({"id": self.repo, "sha": COMMIT, "siblings": siblings}).encode()
            return self.send(request, 200, data, body, {"Content-Type": "application/json"})
        prefix = f"/{self.repo}/resolve/"
        _revision, _, name = path[len(prefix):].partition("/")
        if not path.startswith(prefix) or not name:
            return self.send(request, 404, b"", body, {"X-Error-Code": "RepoNotFound"})
        file = self.folder / name
        if "/" in name or not file.is_file():
            return self.send(request, 404, b"", body, {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
        if body and name in self.cut:
            self.send(request, 200, data, body, headers, part=len(data) // 2)
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        if body:
            self.sent[name] += 1
        self.send(request, 200, data, body, headers)

    @staticmethod
    def send(request, status: int, data: bytes, body: bool, headers: dict,
             part: int | None = None) -> None:
        """Answer with ``data`` (its first ``part`` bytes only, when given,
        under the whole length)."""
        request.send_response(status)
        request.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            request.send_header(key, value)
        request.end_headers()
        if body:
            request.wfile.write(data if part is None else data[:part])
