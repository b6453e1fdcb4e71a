"""Who voxctl talks to and as whom: per-server credentials in a 0600 file, refreshed before
they expire (rotating refresh tokens), and stubs that carry the access token."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2_grpc,
    jobs_pb2_grpc,
    keys_pb2_grpc,
    projects_pb2_grpc,
    results_pb2_grpc,
    settings_pb2_grpc,
    users_pb2_grpc,
    voices_pb2_grpc,
)

REFRESH_MARGIN_SECONDS = 60


def config_dir() -> Path:
    return Path(os.environ.get("VOXCTL_CONFIG_DIR") or Path.home() / ".config" / "voxmesh")


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _read() -> dict[str, Any]:
    path = credentials_path()
    if not path.exists():
        return {"servers": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _write(data: dict[str, Any]) -> None:
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credentials_path()
    temporary = path.with_suffix(".tmp")
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
    )  # never readable by others
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(temporary, path)
    os.chmod(path, 0o600)


def default_server() -> str:
    return os.environ.get("VOXMESH_SERVER") or _read().get("current") or "127.0.0.1:50051"


def save_tokens(server: str, username: str, tokens: auth_pb2.TokenPair) -> None:
    data = _read()
    data["current"] = server
    data.setdefault("servers", {})[server] = {
        "username": username,
        "access_token": tokens.access_token,
        "access_expires_at": tokens.access_expires_at.seconds,
        "refresh_token": tokens.refresh_token,
    }
    _write(data)


def forget(server: str) -> dict[str, Any] | None:
    data = _read()
    entry = data.get("servers", {}).pop(server, None)
    _write(data)
    return entry


class NotSignedIn(Exception):
    pass


@dataclass
class Session:
    server: str
    channel: grpc.Channel
    username: str
    token: str

    @classmethod
    def open(cls, server: str) -> Session:
        key = os.environ.get("VOXMESH_API_KEY")
        if key:  # a service's API key: no sign-in, nothing stored
            return cls(server, grpc.insecure_channel(server), "(API key)", key)
        entry = _read().get("servers", {}).get(server)
        if not entry:
            raise NotSignedIn(f"not signed in to {server}: run `voxctl login --server {server}`")
        channel = grpc.insecure_channel(server)
        if entry["access_expires_at"] - time.time() < REFRESH_MARGIN_SECONDS:
            try:
                refreshed = auth_pb2_grpc.AuthServiceStub(channel).RefreshToken(
                    auth_pb2.RefreshTokenRequest(refresh_token=entry["refresh_token"]), timeout=30
                )
            except grpc.RpcError as e:
                raise NotSignedIn(
                    f"your session on {server} has ended ({e.details()}): run `voxctl login`"
                ) from None
            save_tokens(server, entry["username"], refreshed.tokens)
            entry = _read()["servers"][server]
        return cls(server, channel, entry["username"], entry["access_token"])

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def stub(self, name: str) -> Any:
        stubs = {
            "auth": auth_pb2_grpc.AuthServiceStub, "users": users_pb2_grpc.UserServiceStub,
            "projects": projects_pb2_grpc.ProjectServiceStub, "jobs": jobs_pb2_grpc.JobServiceStub,
            "results": results_pb2_grpc.JobResultServiceStub, "files": files_pb2_grpc.FileServiceStub,
            "settings": settings_pb2_grpc.SettingsServiceStub, "voices": voices_pb2_grpc.VoiceServiceStub,
            "keys": keys_pb2_grpc.KeyServiceStub,
        }  # fmt: skip
        return stubs[name](self.channel)
