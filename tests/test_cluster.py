"""A 3-node JetStream cluster under faults, as deploy/ describes it (deploy/compose.yaml and
deploy/k8s/nats.yaml: three nats-servers in cluster "voxmesh", every stream and bucket with 3
replicas via VOXMESH_NATS_REPLICAS=3, two control-plane replicas, workers that know only the
NATS addresses). Here all on loopback, each a separate process sharing nothing but the
PostgreSQL and NATS addresses (TLS between hosts is tested in test_mesh_trust.py).

Mid-job it kills -9 the NATS meta leader, then (after the node is back and caught up) the jobs
stream's leader together with one control-plane replica. Every job must end exactly once, its
files stay readable, and a watcher that reconnects to the surviving replica with its last seq
misses nothing and sees nothing twice. The killed nodes come back and catch up."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from control.db.embedded import EmbeddedPostgres
from control.kinds import FIELDS
from tests.conftest import free_port
from tests.test_multihost import _env
from voxmesh import mesh
from voxmesh.nats_auth import CONTROL, CREDENTIALS_FILE, Credentials, worker_user
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
JOBS_STREAM = "VOXMESH_JOBS"


def until(check: Callable[[], Any], what: str | Callable[[], str], timeout: float = 60) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (OSError, grpc.RpcError, KeyError, ValueError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.2)


class Cluster:
    def __init__(self, root: Path) -> None:
        ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
        credentials = Credentials(root / CREDENTIALS_FILE, FIELDS)
        self.nodes = [
            EmbeddedNats(
                root / f"n{i + 1}",
                port=client,
                server_name=f"n{i + 1}",
                cluster_port=route,
                routes=[r for _, r, _ in ports],
                monitor_port=monitor,
                credentials=credentials,
            )
            for i, (client, route, monitor) in enumerate(ports)
        ]

    def url(self, user: str) -> str:
        return ",".join(node.url_for(user) for node in self.nodes)

    def node(self, name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.server_name == name)

    def jsz(self, node: EmbeddedNats) -> dict[str, Any]:
        address = f"http://127.0.0.1:{node.monitor_port}/jsz"
        with urllib.request.urlopen(address, timeout=2) as reply:
            return dict(json.load(reply))

    def meta_leader(self) -> str:
        for node in self.nodes:
            if node.accepting():
                with_leader = self.jsz(node).get("meta_cluster", {}).get("leader", "")
                if with_leader:
                    return str(with_leader)
        return ""

    def stream(self) -> Any:
        """The jobs stream's cluster info (leader, replicas), asked as the control plane."""

        async def ask() -> Any:
            nc = await mesh.connect(self.url(CONTROL), "cluster-test")
            try:
                return (await nc.jetstream().stream_info(JOBS_STREAM)).cluster
            finally:
                await nc.close()

        return asyncio.run(asyncio.wait_for(ask(), 15))

    def caught_up(self, name: str) -> bool:
        """Whether node `name` holds a current copy of the jobs stream."""
        info = self.stream()
        if info.leader == name:
            return True
        return any(r.name == name and r.current and not r.lag for r in info.replicas or [])


def _states(api: Api, ids: list[str]) -> list[str]:
    return [
        f"{jobs_pb2.JobStatus.Name(j.status)} {j.progress}% attempts {j.attempts}"
        for j in (api.job(i) for i in ids)
    ]


def _seqs(events: list[Any]) -> list[int]:
    """The seqs of the events proper (a snapshot only says where the job stood)."""
    return [int(e.seq) for e in events if e.WhichOneof("event") != "snapshot"]


class Api:
    """One control-plane replica, as a signed-in client sees it."""

    def __init__(self, port: int, token: str = "") -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.md = (("authorization", f"Bearer {token}"),)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.files = files_pb2_grpc.FileServiceStub(self.channel)
        self.results = results_pb2_grpc.JobResultServiceStub(self.channel)

    def login(self) -> str:
        stub = auth_pb2_grpc.AuthServiceStub(self.channel)
        request = auth_pb2.LoginRequest(username="ops", password="ops-password")
        return str(stub.Login(request, timeout=5).tokens.access_token)

    def create(self, project: str, text: str) -> str:
        request = jobs_pb2.CreateJobRequest(project_id=project, tts=jobs_pb2.TtsParams(text=text))
        return str(self.jobs.CreateJob(request, metadata=self.md, timeout=20).job.id)

    def job(self, job_id: str) -> jobs_pb2.Job:
        request = jobs_pb2.GetJobRequest(job_id=job_id)
        return self.jobs.GetJob(request, metadata=self.md, timeout=10).job

    def events(self, job_id: str, after: int = 0, limit: int = 0) -> list[Any]:
        call = self.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=after), metadata=self.md, timeout=120
        )
        out = []
        for event in call:
            out.append(event)
            if limit and len(out) >= limit:
                call.cancel()
                break
        return out


def test_cluster_survives_losing_leaders_and_a_control_plane(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "nats")
    for node in cluster.nodes:
        node.start()
    pg = EmbeddedPostgres(tmp_path / "db" / "pgdata", delete_on_exit=True)
    database = pg.ensure_database("voxmesh")
    ports = [free_port(), free_port()]
    controls: list[subprocess.Popen[bytes]] = []
    workers: list[subprocess.Popen[bytes]] = []
    try:
        until(cluster.meta_leader, "the cluster to elect a meta leader")
        envs = [
            _env(
                DATABASE_URL=database,
                NATS_URL=cluster.url(CONTROL),
                VOXMESH_PORT=str(port),
                VOXMESH_DATA_DIR=str(tmp_path / f"control-{i}"),
                VOXMESH_NATS_REPLICAS="3",
                VOXMESH_AUTH__JWT_SECRET="cluster-secret-" + "c" * 40,
                VOXMESH_MESH__ACK_WAIT_SECONDS="15",  # above a failover's few seconds
            )
            for i, port in enumerate(ports)
        ]
        subprocess.run([sys.executable, "-m", "control", "create-user", "ops", "--role", "editor"],
                       env=envs[0], input="ops-password\n", text=True, check=True, timeout=120,
                       capture_output=True)  # fmt: skip
        for env in envs:
            log = (tmp_path / f"control-{len(controls)}.log").open("wb")
            controls.append(
                subprocess.Popen(
                    [sys.executable, "-m", "control", "serve"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        tokens = [until(Api(port).login, f"control plane on {port}", 120) for port in ports]
        a, b = (Api(port, token) for port, token in zip(ports, tokens, strict=True))
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.workers",
                    cluster.url(worker_user("tts")),
                    f"tts@host-{x}",
                ],
                env=_env(),
                cwd=ROOT,
                stdout=(tmp_path / f"worker-{x}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for x in "xy"
        ]
        project = (
            projects_pb2_grpc.ProjectServiceStub(a.channel)
            .CreateProject(projects_pb2.CreateProjectRequest(name="cluster"), metadata=a.md)
            .project.id
        )
        info = until(cluster.stream, "the jobs stream on 3 replicas", 120)
        assert len(info.replicas or []) == 2, info  # the leader and two followers

        # 1. The meta leader dies mid-job; jobs go on, and new ones can be created meanwhile.
        first = [a.create(project, "sleep:3") for _ in range(4)]
        until(lambda: any(a.job(j).status == jobs_pb2.JOB_STATUS_RUNNING for j in first),
              "a job to start")  # fmt: skip
        meta = cluster.meta_leader()
        cluster.node(meta).kill()
        first += [b.create(project, "sleep:2") for _ in range(2)]
        until(lambda: cluster.meta_leader() not in ("", meta), "a new meta leader")
        done = {jobs_pb2.JOB_STATUS_COMPLETED}
        until(lambda: all(a.job(j).status in done for j in first),
              lambda: f"the first jobs: {_states(a, first)}", 180)  # fmt: skip
        cluster.node(meta).start()
        until(lambda: cluster.caught_up(meta), f"{meta} to catch up after its restart", 120)

        # 2. The jobs stream's leader and control plane A die together mid-job; a watcher of A
        # reconnects to B with its last seq.
        second = [a.create(project, "sleep:4") for _ in range(3)]
        watched = second[0]
        seen = a.events(watched, limit=3)  # its state, then events as they come
        until(lambda: a.job(watched).status == jobs_pb2.JOB_STATUS_RUNNING, "the watched job")
        leader = cluster.stream().leader
        cluster.node(leader).kill()
        controls[0].kill()
        controls[0].wait(10)
        before = _seqs(seen)
        rest = b.events(watched, after=before[-1])
        whole = _seqs(b.events(watched))
        assert before + _seqs(rest) == whole == list(range(1, len(whole) + 1)), (
            "the reconnected watcher missed or repeated events"
        )
        assert rest[-1].WhichOneof("event") == "result"
        until(lambda: all(b.job(j).status in done for j in second),
              lambda: f"the second jobs: {_states(b, second)}", 180)  # fmt: skip

        # Every job ended exactly once: one COMPLETED status, one result, files readable.
        for job_id in first + second:
            events = b.events(job_id)
            ends = [e for e in events if e.WhichOneof("event") == "status"
                    and e.status.status == jobs_pb2.JOB_STATUS_COMPLETED]  # fmt: skip
            results = [e for e in events if e.WhichOneof("event") == "result"]
            assert len(ends) == 1 and len(results) == 1, (job_id, ends, results)
            result = b.results.GetJobResult(
                results_pb2.GetJobResultRequest(job_id=job_id), metadata=b.md, timeout=10
            ).result
            (file,) = result.files
            data = b"".join(
                part.data
                for part in b.files.DownloadFile(
                    files_pb2.DownloadFileRequest(file_id=file.file_id), metadata=b.md, timeout=30
                )
            )
            assert data.startswith(f"job {job_id}".encode()), data[:80]

        cluster.node(leader).start()
        until(lambda: cluster.caught_up(leader), f"{leader} to catch up after its restart", 120)
        print(f"\nkilled meta leader {meta}, then stream leader {leader} with control plane A; "
              f"{len(first) + len(second)} jobs each completed once; both nodes caught up")  # fmt: skip
    finally:
        for proc in [*workers, *controls]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*workers, *controls]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for node in cluster.nodes:
            node.stop()
        pg.stop()
