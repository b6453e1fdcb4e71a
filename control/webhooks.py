"""Webhooks: signed job events POSTed to callback URLs, durably.

- Where they are set: a project's `webhooks` (UpdateProject), or one job's own (CreateJob),
  fixed on the job when it is created (`check` validates them).
- What is sent: Standard Webhooks (https://www.standardwebhooks.com): a JSON body
  `{"type", "timestamp", "data"}` with `webhook-id`, `webhook-timestamp` and
  `webhook-signature` (HMAC-SHA256 with the project's `whsec_` secret), signed by the
  `standardwebhooks` package. Types: job.completed, job.failed, job.cancelled, and job.stage for
  URLs that opted in.
- Durability: `enqueue` adds the deliveries in the transaction of the job change they report
  (called by the lifecycle, the one writer of job state); `Sender` (every control-plane replica
  runs one) claims due ones with SKIP LOCKED, sends them after commit, and retries with backoff
  for about a day. A restart loses nothing: what was not delivered is still due.
- Server-side request forgery: only http/https, and the address must be public unless an admin
  set `webhook_allow_private_addresses`; checked when a URL is set and again, on every address
  the name resolves to, before each attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook as Signer

from control import settings_catalog
from control.db.models import Job, JobStatus, Project, WebhookDelivery
from voxmesh.errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_PER_TARGET = 5
MAX_URL_LENGTH = 2000
# After the first attempt: the Standard Webhooks schedule (about 27.6 hours in all).
RETRY_AFTER = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
ATTEMPT_TIMEOUT = 15.0
CLAIM_FOR = timedelta(seconds=60)  # an attempt in flight; a replica that dies frees it then
BATCH = 20
IDLE_POLL_SECONDS = 5.0

TERMINAL_EVENT = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}
STAGE_EVENT = "job.stage"

_due = asyncio.Event()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


# --- checking URLs ----------------------------------------------------------------------------
def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _split(url: str, field: str) -> tuple[str, str]:
    if not url or len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"a webhook url takes 1 to {MAX_URL_LENGTH} characters", field=field)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidArgument(f"{url[:100]!r} is not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument("a webhook url must start with http:// or https://", field=field)
    if not parts.hostname:
        raise InvalidArgument(f"{url[:100]!r} names no host", field=field)
    if parts.username or parts.password:
        raise InvalidArgument("a webhook url must not carry a user name or password", field=field)
    return parts.scheme, parts.hostname


def _refuse_private(host: str, addresses: Iterable[str], field: str) -> None:
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if not _public(address):
            raise InvalidArgument(
                f"webhook host {host!r} is a loopback or private address ({address}); an admin "
                "must set webhook_allow_private_addresses to allow it",
                field=field,
            )


async def _resolve(host: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def allows_private(session: AsyncSession, user_id: uuid.UUID) -> bool:
    value, _ = (await settings_catalog.resolve(session, user_id))["webhook_allow_private_addresses"]
    return bool(value)


async def check(
    session: AsyncSession, user_id: uuid.UUID, hooks: Sequence[Any], field: str
) -> list[dict[str, Any]]:
    """The `Webhook` messages as stored JSON, or INVALID_ARGUMENT saying what is wrong."""
    if len(hooks) > MAX_PER_TARGET:
        raise InvalidArgument(f"at most {MAX_PER_TARGET} webhooks", field=field)
    if not hooks:
        return []
    allow_private = await allows_private(session, user_id)
    out = []
    for i, hook in enumerate(hooks):
        where = f"{field}[{i}].url"
        _, host = _split(hook.url, where)
        if not allow_private:
            if host.lower() == "localhost" or host.lower().endswith(".localhost"):
                _refuse_private(host, ["127.0.0.1"], where)
            with contextlib.suppress(ValueError):
                _refuse_private(host, [str(ipaddress.ip_address(host))], where)
        out.append({"url": hook.url, "stages": bool(hook.stages)})
    return out


# --- writing deliveries (in the job's transaction) --------------------------------------------
def payload(job: Job, event_type: str) -> dict[str, Any]:
    return {
        "type": event_type,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "job_id": str(job.id),
            "project_id": str(job.project_id),
            "job_type": job.type.value,
            "status": job.status.value,
            "run": job.run,
            "progress": job.progress,
            "stage": job.stage,
            "title": job.title,
            "error": job.error,
            "job_url": f"/v1/jobs/{job.id}",
        },
    }


def enqueue(session: AsyncSession, job: Job, event_type: str) -> bool:
    """Add this event's deliveries to the job's transaction; True if there were any."""
    added = False
    for hook in job.webhooks or ():
        if event_type == STAGE_EVENT and not hook.get("stages"):
            continue
        session.add(
            WebhookDelivery(
                id=f"msg_{uuid.uuid4().hex}",
                job_id=job.id,
                url=hook["url"],
                event_type=event_type,
                payload=payload(job, event_type),
                next_attempt_at=datetime.now(UTC),
            )
        )
        added = True
    return added


def poke() -> None:
    """Deliveries were committed on this replica: send them now rather than at the next poll."""
    _due.set()


# --- sending (after commit) -------------------------------------------------------------------
class Sender:
    """Claims due deliveries, POSTs them, records each attempt; one per control-plane replica."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._client = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT, follow_redirects=False)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    sent = await self.send_due()
                except Exception as e:  # the database may be down: try again at the next poll
                    log.warning("webhook deliveries: %s", e)
                    sent = 0
                if sent < BATCH:
                    with contextlib.suppress(TimeoutError):  # not wait_for: see dispatcher.py
                        async with asyncio.timeout(IDLE_POLL_SECONDS):
                            await _due.wait()
                    _due.clear()
        finally:
            await self._client.aclose()

    async def send_due(self) -> int:
        now = datetime.now(UTC)
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(WebhookDelivery, Project.webhook_secret, Job.created_by)
                    .join(Job, Job.id == WebhookDelivery.job_id)
                    .join(Project, Project.id == Job.project_id)
                    .where(
                        WebhookDelivery.delivered_at.is_(None),
                        WebhookDelivery.given_up_at.is_(None),
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(BATCH)
                    .with_for_update(of=WebhookDelivery, skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            for delivery, _, _ in rows:  # claimed: no other replica sends it meanwhile
                delivery.next_attempt_at = now + CLAIM_FOR
            allow = {
                user: await allows_private(session, user)
                for user in {created_by for _, _, created_by in rows}
            }
            claimed = [
                (d.id, d.url, d.payload, d.attempts, secret, allow[u]) for d, secret, u in rows
            ]
            await session.commit()
        await asyncio.gather(*(self._attempt(*c) for c in claimed))
        return len(claimed)

    async def _attempt(
        self,
        delivery_id: str,
        url: str,
        body: dict[str, Any],
        attempts: int,
        secret: str,
        allow_private: bool,
    ) -> None:
        status: int | None = None
        error = ""
        try:
            _, host = _split(url, "url")
            if not allow_private:
                _refuse_private(host, await _resolve(host), "url")
            data = json.dumps(body, separators=(",", ":"))
            sent_at = datetime.now(UTC)
            signature = Signer(secret).sign(delivery_id, sent_at, data)
            response = await self._client.post(
                url,
                content=data.encode(),
                headers={
                    "content-type": "application/json",
                    "user-agent": "Voxmesh-Webhooks/1",
                    "webhook-id": delivery_id,
                    "webhook-timestamp": str(int(sent_at.timestamp())),
                    "webhook-signature": signature,
                },
            )
            status = response.status_code
            if not 200 <= status < 300:
                error = f"the receiver answered HTTP {status}"
        except InvalidArgument as e:
            error = e.message
        except (httpx.HTTPError, OSError) as e:
            error = f"could not reach the receiver: {type(e).__name__}: {e}"[:500]
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "attempts": attempts + 1,
            "last_status_code": status,
            "last_error": error,
            "last_attempt_at": now,
        }
        if not error:
            values["delivered_at"] = now
        elif attempts < len(RETRY_AFTER):
            values["next_attempt_at"] = now + RETRY_AFTER[attempts]
        else:
            values["given_up_at"] = now
        async with self._sessions() as session:
            await session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
            )
            await session.commit()
        if error:
            log.info("webhook %s to %s: %s", delivery_id, url, error)
