"""A real MPD for the tests: Debian's ``mpd`` (installed by
scripts/setup.sh) on 127.0.0.1 and a free port, with a temporary config
whose music directory is the test library, a null audio output and no
state file. It can be restarted in the middle of a test."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = ""):
    """Poll ``predicate`` until it returns something true; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(interval)


class MpdServer:
    """One MPD process; ``start``, ``stop``, ``restart``, ``client()``."""

    def __init__(self, root: Path, music_dir: Path, password: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.music_dir = Path(music_dir)
        self.password = password
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config = self.root / "mpd.conf"
        self.log = self.root / "mpd.log"
        self.process: subprocess.Popen | None = None
        self.write_config()

    def write_config(self) -> None:
        lines = [
            f'music_directory "{self.music_dir}"',
            f'db_file "{self.root / "database"}"',
            f'log_file "{self.log}"',
            f'bind_to_address "{self.host}"',
            f'port "{self.port}"',
            'auto_update "no"',
            'zeroconf_enabled "no"',
            'audio_output {\n  type "null"\n  name "null"\n  mixer_type "none"\n}',
        ]
        if self.password:
            lines += [
                f'password "{self.password}@read,add,control,admin"',
                'default_permissions "read"',
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("mpd")
        if binary is None:
            pytest.fail("mpd is not installed: run scripts/setup.sh")
        self.process = subprocess.Popen(
            [binary, "--no-daemon", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "mpd.stderr", "ab"),
        )
        wait_until(self.answers, timeout, what=f"MPD on port {self.port} ({self.log_tail()})")

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mpd exited with {self.process.returncode}: "
                                 f"{self.log_tail()}")
        try:
            client = self.client()
        except Exception:  # not up yet
            return False
        client.disconnect()
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):
        """A connected python-mpd2 client with all permissions."""
        import mpd

        client = mpd.MPDClient()
        client.timeout = 10
        client.connect(self.host, self.port)
        if self.password:
            client.password(self.password)
        return client

    def update(self, timeout: float = 60.0) -> int:
        """Scan the music directory; returns how many songs MPD knows."""
        client = self.client()
        try:
            client.update()
            wait_until(lambda: "updating_db" not in client.status(), timeout,
                       what="MPD's database update")
            return int(client.stats()["songs"])
        finally:
            client.disconnect()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            text = []
        try:
            text += (self.root / "mpd.stderr").read_text(errors="replace").splitlines()
        except OSError:
            pass
        return " | ".join(text[-lines:])


@pytest.fixture
def mpd_factory(tmp_path):
    """Start MPDs for a test: ``mpd_factory(music_dir, password=None)``;
    all are stopped at the end."""
    servers: list[MpdServer] = []

    def make(music_dir, password: str | None = None, start: bool = True) -> MpdServer:
        server = MpdServer(tmp_path / f"mpd{len(servers)}", Path(music_dir), password)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
