"""What an operator sees: grpcurl lists the services through reflection, the health service
answers, and the README's grpcurl recipes run as written."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control.db.models import Job, JobStatus, UserRole
from control.server import SERVICE_NAMES
from tests.harness import Harness

ROOT = Path(__file__).resolve().parents[1]
GRPCURL = shutil.which("grpcurl") or str(ROOT / ".venv" / "bin" / "grpcurl")


async def _run(*args: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (
        f"{args[0]} failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}"
    )
    return out.decode()


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:sh|bash)\n(.*?)```", text, re.S)
    assert match, f"README has no block marked {marker}"
    return match.group(1)


async def test_grpcurl_lists_services_through_reflection(harness: Harness) -> None:
    listed = (await _run(GRPCURL, "-plaintext", harness.target, "list")).split()
    assert set(SERVICE_NAMES) <= set(listed)
    assert "grpc.health.v1.Health" in listed
    described = await _run(
        GRPCURL, "-plaintext", harness.target, "describe", "voxmesh.v1.JobService"
    )
    assert "rpc CreateJob ( .voxmesh.v1.CreateJobRequest )" in described


async def test_health_reports_serving(harness: Harness) -> None:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    for service in ["", *SERVICE_NAMES]:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    out = await _run(GRPCURL, "-plaintext", harness.target, "grpc.health.v1.Health/Check")
    assert '"status": "SERVING"' in out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
async def test_readme_grpcurl_recipes_run_as_written(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR, login=False, name="editor1")
    project = await harness.project(editor.user_id)
    # A pending job for the cancel recipe, then a finished one (the newest), so the WatchJob
    # recipe gets its state and the stream ends.
    pending = await harness.job(project, editor.user_id, title="Waiting")
    await harness.job(project, editor.user_id, title="From the README", status=JobStatus.COMPLETED)
    script = readme_block("grpcurl-recipes")
    out = await _run(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        env={
            "VOXMESH": harness.target,
            "VOXMESH_USER": "editor1",
            "VOXMESH_PASSWORD": editor.password,
            "PATH": f"{Path(GRPCURL).parent}:{os.environ['PATH']}",
        },
    )
    assert "voxmesh.v1.JobService" in out  # list
    assert "From the README" in out  # ListJobs with the token
    assert '"total_size": "1"' in out
    assert '"snapshot"' in out and "JOB_STATUS_COMPLETED" in out  # WatchJob
    assert "JOB_STATUS_CANCELLED" in out  # CancelJob's answer
    async with harness.app.sessions() as session:
        job = await session.get(Job, pending)
        assert job is not None and job.status is JobStatus.CANCELLED
