"""docker-compose.yml, the Dockerfiles and the Kubernetes manifests, checked without a Docker engine or a cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.streams.settings import REPO_ROOT, Settings

K8S = REPO_ROOT / "deploy" / "k8s"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_compose_file_is_valid_and_wires_the_stack() -> None:
    exe = shutil.which("docker-compose") or shutil.which("docker")
    assert exe, "docker-compose is needed (Debian's docker-compose; make test installs it)"
    cmd = [exe, "-f", "docker-compose.yml", "config", "-q"] if exe.endswith("docker-compose") else \
        [exe, "compose", "-f", "docker-compose.yml", "config", "-q"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:") and "latest" not in kafka["image"]
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert {k for k in env if k.endswith("REPLICATION_FACTOR")} >= {
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"}
    assert all(v == 1 for k, v in env.items() if k.endswith("REPLICATION_FACTOR"))
    assert "INTERNAL://kafka:19092" in env["KAFKA_ADVERTISED_LISTENERS"] and "HOST://localhost:9092" in \
        env["KAFKA_ADVERTISED_LISTENERS"]
    workers = [s for n, s in services.items() if n.startswith("worker-") and "profiles" not in s]
    assert len(workers) == 2 and all(w["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
                                     for w in workers)
    assert services["topic-init"]["command"] == ["topics", "create"]
    assert {"schema-registry", "generator", "prometheus", "grafana"} <= set(services)
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
    targets = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert targets["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker-1:6066", "worker-2:6066"]
    gpu = services["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per build stage (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_rules(name: str) -> None:
    all_stages = stages(REPO_ROOT / "deploy" / name)
    for stage in all_stages:
        image = stage[0].split()[1]
        assert ":" in image and not image.endswith(":latest") and re.search(r":\d", image), f"unpinned base {image}"
    final = all_stages[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the final stage must run as a non-root user"
    assert any(i.upper().startswith("HEALTHCHECK ") and "/healthz" in i for i in final)
    installs = " ".join(i for i in final if i.upper().startswith("RUN "))
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", installs), "no compilers in the final image"
    for instr in (i for s in all_stages for i in s if i.split()[0].upper() in ("ENV", "ARG")):
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)\w*\s*=\s*\S", instr, re.I), f"secret in a layer: {instr}"
    assert (REPO_ROOT / ".dockerignore").read_text().count(".venv")


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    import kubernetes_validate

    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "keda-scaledobject.yaml"):
            continue  # a kustomize file and KEDA CRDs: not in the core API schemas, checked below
        for doc in docs(path):
            kubernetes_validate.validate(doc, "1.31.0", strict=True)
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_fields_that_matter() -> None:
    dep = docs(K8S / "deployment.yaml")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "1"  # one process, one core
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert {"secretRef": {"name": "driftline-kafka"}} in c["envFrom"]
    config = docs(K8S / "configmap.yaml")[0]["data"]
    fields = {f"DRIFTLINE_{k.upper()}" for k in Settings.model_fields}
    unknown = sorted(k for k in config if k.split("__")[0] not in fields)
    assert not unknown, f"the config map names settings that do not exist: {unknown}"
    secret = docs(K8S / "secret.yaml")[0]
    assert all(v == "" for v in secret["stringData"].values()), "no credential values in the repository"

    gpu = docs(K8S / "deployment-gpu.yaml")[0]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    scaled, auth = docs(K8S / "keda-scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject" and auth["kind"] == "TriggerAuthentication"
    trigger = scaled["spec"]["triggers"][0]
    settings = Settings()
    assert trigger["type"] == "kafka" and trigger["metadata"]["topic"] == settings.topic("requests")
    assert trigger["metadata"]["consumerGroup"] == settings.score_group
    assert scaled["spec"]["maxReplicaCount"] == settings.partitions.requests  # no idle members
    assert scaled["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]

    pdb = docs(K8S / "pdb.yaml")[0]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    policy = docs(K8S / "networkpolicy.yaml")[0]
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == 6066 and "Egress" in policy["spec"]["policyTypes"]
    job = docs(K8S / "trainer-job.yaml")[0]
    assert job["spec"]["backoffLimit"] >= 3 and job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
