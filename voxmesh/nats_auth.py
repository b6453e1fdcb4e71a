"""Who may do what on NATS: one user for the control plane and one per worker type, with
permissions that let a worker do its job and nothing else.

    control          everything (it provisions streams, consumers and buckets, dispatches runs,
                     applies events, publishes to watchers, marks runs cancelled or done)
    worker-<type>    pull and ack its own job and shard consumers (and read their limits);
                     publish worker events and (for its own type) shard tasks; read the run
                     marks; read and write blobs and shard results; replies only on its own
                     inbox prefix, so it cannot listen to anyone else's replies

It may not publish dispatches (voxmesh.jobs.>), watcher updates, run marks, or touch any other
stream or consumer. Its events must also carry the run's token (see mesh.run_token), so even a
worker cannot speak for a run it does not hold.

The embedded nats-server gets these users with generated passwords, kept 0600 in its data
directory (credentials.json); a deployment configures the same users (deploy/).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

CONTROL = "control"
CREDENTIALS_FILE = "credentials.json"


def worker_user(job_type: str) -> str:
    return f"worker-{job_type}"


def inbox_prefix(user: str) -> str:
    """Where a user's replies arrive: `_INBOX.<user>` (it may subscribe there only)."""
    return f"_INBOX.{user}"


def worker_permissions(job_type: str) -> dict[str, Any]:
    jobs, tasks = f"worker-{job_type}", f"shards-{job_type}"
    user = worker_user(job_type)
    return {
        "publish": {
            "allow": [
                f"$JS.API.CONSUMER.INFO.VOXMESH_JOBS.{jobs}",
                f"$JS.API.CONSUMER.MSG.NEXT.VOXMESH_JOBS.{jobs}",
                f"$JS.ACK.VOXMESH_JOBS.{jobs}.>",
                f"$JS.API.CONSUMER.INFO.VOXMESH_TASKS.{tasks}",
                f"$JS.API.CONSUMER.MSG.NEXT.VOXMESH_TASKS.{tasks}",
                f"$JS.ACK.VOXMESH_TASKS.{tasks}.>",
                "voxmesh.events.*",  # the stream files it under the job's partition
                f"voxmesh.tasks.{job_type}",
                f"voxmesh.presence.{job_type}",  # announcing what it can run (voices, models)
                # Binding to the buckets, reading run marks, shard results and blobs.
                "$JS.API.STREAM.INFO.KV_voxmesh_job_control",
                "$JS.API.STREAM.INFO.KV_voxmesh_shards",
                "$JS.API.STREAM.INFO.OBJ_voxmesh_files",
                "$JS.API.STREAM.MSG.GET.KV_voxmesh_job_control",
                "$JS.API.DIRECT.GET.KV_voxmesh_job_control.>",
                "$JS.API.STREAM.MSG.GET.KV_voxmesh_shards",
                "$JS.API.DIRECT.GET.KV_voxmesh_shards.>",
                "$KV.voxmesh_shards.>",
                "$JS.API.STREAM.MSG.GET.OBJ_voxmesh_files",
                "$JS.API.DIRECT.GET.OBJ_voxmesh_files.>",
                "$JS.API.STREAM.NAMES",  # reading a blob finds its stream by subject
                "$JS.API.CONSUMER.CREATE.OBJ_voxmesh_files",
                "$JS.API.CONSUMER.CREATE.OBJ_voxmesh_files.>",
                "$JS.API.CONSUMER.DELETE.OBJ_voxmesh_files.>",
                "$JS.FC.OBJ_voxmesh_files.>",  # flow control while a large blob streams in
                "$O.voxmesh_files.C.>",
                "$O.voxmesh_files.M.>",
            ]
        },
        "subscribe": {"allow": [f"{inbox_prefix(user)}.>"]},
    }


def server_users(passwords: dict[str, str], worker_types: Iterable[str]) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = [{
        "user": CONTROL, "password": passwords[CONTROL],
        "permissions": {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}},
    }]  # fmt: skip
    for job_type in worker_types:
        user = worker_user(job_type)
        users.append({"user": user, "password": passwords[user],
                      "permissions": worker_permissions(job_type)})  # fmt: skip
    return users


class Credentials:
    """The users' passwords, kept 0600 in `path` (made on first use, extended for new types)."""

    def __init__(self, path: Path, worker_types: Iterable[str]) -> None:
        self.path = path
        self.worker_types = tuple(worker_types)
        wanted = [CONTROL, *(worker_user(t) for t in self.worker_types)]
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        missing = [u for u in wanted if u not in stored]
        if missing:
            stored.update({u: secrets.token_urlsafe(24) for u in missing})
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(stored, out, indent=1)
        os.chmod(path, 0o600)
        self.passwords = stored

    def users(self) -> list[dict[str, Any]]:
        return server_users(self.passwords, self.worker_types)

    def url(self, base: str, user: str) -> str:
        """`base` (nats://host:port) with `user`'s credentials in it."""
        return with_user(base, user, self.passwords[user])


def with_user(base: str, user: str, password: str) -> str:
    parts = urlsplit(base)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def user_of(url: str) -> str | None:
    """The user named in a NATS URL (the first, for a comma-separated list), if any."""
    return urlsplit(url.split(",")[0]).username


def redacted(url: str) -> str:
    """A NATS URL (or comma-separated list) fit for logs: passwords hidden."""
    out = []
    for one in url.split(","):
        parts = urlsplit(one)
        if parts.password is None:
            out.append(one)
            continue
        out.append(urlunsplit(parts._replace(
            netloc=f"{parts.username}:***@{parts.hostname}:{parts.port}")))  # fmt: skip
    return ",".join(out)


def password_variable(user: str) -> str:
    """The environment variable a deployment keeps `user`'s password in."""
    return "NATS_PASSWORD_" + user.upper().replace("-", "_")


def deploy_conf(worker_types: Iterable[str]) -> str:
    """The `authorization` block of a deployment's nats-server configuration: the same users
    and permissions as the embedded server, each password read from its environment variable
    (deploy/nats-auth.conf; regenerate with `python -m voxmesh.nats_auth`)."""
    lines = ["# Generated by `python -m voxmesh.nats_auth` from voxmesh/nats_auth.py: do not edit.",
             "# Each password comes from the environment variable named beside it.",
             "authorization {", "  users: ["]  # fmt: skip
    for user in server_users({u: "" for u in _all_users(worker_types)}, worker_types):
        permissions = json.dumps(user["permissions"], sort_keys=True)
        lines.append(f'    {{user: "{user["user"]}", password: ${password_variable(user["user"])}, '
                     f"permissions: {permissions}}}")  # fmt: skip
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def _all_users(worker_types: Iterable[str]) -> list[str]:
    return [CONTROL, *(worker_user(t) for t in worker_types)]


if __name__ == "__main__":
    from control.kinds import FIELDS

    print(deploy_conf(FIELDS), end="")
