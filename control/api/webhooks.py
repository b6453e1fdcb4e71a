"""WebhookService: what happened to a job's webhook deliveries (control/webhooks.py sends them)."""

from __future__ import annotations

import grpc
from sqlalchemy import select

from control.api.jobs import get_job
from control.app import ControlApp
from control.convert import ts
from control.db.models import WebhookDelivery
from control.validate import required_uuid
from voxmesh.v1 import webhooks_pb2, webhooks_pb2_grpc


def delivery_to_pb(d: WebhookDelivery) -> webhooks_pb2.WebhookDelivery:
    pending = d.delivered_at is None and d.given_up_at is None
    return webhooks_pb2.WebhookDelivery(
        id=d.id,
        job_id=str(d.job_id),
        url=d.url,
        event_type=d.event_type,
        attempts=d.attempts,
        last_status_code=d.last_status_code or 0,
        last_error=d.last_error,
        create_time=ts(d.created_at),
        last_attempt_time=ts(d.last_attempt_at),
        next_attempt_time=ts(d.next_attempt_at) if pending else None,
        delivered_time=ts(d.delivered_at),
        given_up_time=ts(d.given_up_at),
    )


class WebhookService(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, app: ControlApp) -> None:
        self.app = app

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        job_id = required_uuid(request.job_id, "job_id")
        async with self.app.sessions() as session:
            await get_job(session, job_id)  # NOT_FOUND, and the key's project scope
            rows = await session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
            return webhooks_pb2.ListWebhookDeliveriesResponse(
                deliveries=[delivery_to_pb(d) for d in rows]
            )
