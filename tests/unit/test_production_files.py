"""docker-compose.yml, the Dockerfiles and the Kubernetes manifests, checked without a Docker engine or a cluster."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.streams.core.observe import LIVENESS_STALLS
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
    init = services["topic-init"]
    assert init["command"] == ["driftline topics create && driftline schemas register"]
    assert init["depends_on"]["schema-registry"]["condition"] == "service_healthy"
    # every driftline container finds the registry the stack starts (its service name and port)
    registry = services["schema-registry"]
    assert "127.0.0.1:8081:8081" in registry["ports"] and registry["healthcheck"]["test"]
    assert all(str(p).startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    for name, service in services.items():
        if name in ("topic-init", "generator") or name.startswith("worker-"):
            assert service["environment"]["DRIFTLINE_SCHEMA_REGISTRY__URL"] == "http://schema-registry:8081", name
            # the web server on every address of its container, behind the token Prometheus scrapes with
            assert service["environment"]["DRIFTLINE_WEB_HOST"] == "0.0.0.0", name  # noqa: S104
            assert service["environment"]["DRIFTLINE_WEB_TOKEN_FILE"] == "/run/secrets/web_token", name
            assert service["environment"]["DRIFTLINE_CONTROL_KEY_FILE"] == "/run/secrets/control_key", name
            assert service["environment"]["DRIFTLINE_PII_KEY_FILE"] == "/run/secrets/pii_key", name
            assert service["secrets"] == ["web_token", "control_key", "pii_key"], name
    assert services["prometheus"]["secrets"] == ["web_token"] and compose["secrets"]["web_token"]["file"]
    assert compose["secrets"]["control_key"]["file"] == "./deploy/control-key"
    assert compose["secrets"]["pii_key"]["file"] == "./deploy/pii-key"
    scrape = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert scrape[0]["authorization"]["credentials_file"] == "/run/secrets/web_token"
    assert {"schema-registry", "generator", "prometheus", "grafana"} <= set(services)
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
    targets = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert targets["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker-1:6066", "worker-2:6066"]
    gpu = services["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # The traffic generator runs from the installed wheel (driftline.examples), not from a copied checkout.
    generator = " ".join(services["generator"]["command"])
    assert "python -m driftline.examples.fraud.generator" in generator and "/app/examples" not in generator
    assert importlib.util.find_spec("driftline.examples.fraud.generator") is not None


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
    bases = [stage[0].split()[1] for stage in all_stages]
    for image in bases:
        tag, _, digest = image.partition("@")
        assert re.search(r":\d", tag) and not tag.endswith(":latest"), f"base {image} is not pinned by version"
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"base {image} is not pinned by digest"
    assert len(set(bases)) == 1, "the build and the final stage start from the same base (tag and digest)"
    final = all_stages[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the final stage must run as a non-root user"
    assert any(i.upper().startswith("HEALTHCHECK ") and "/healthz" in i for i in final)
    installs = " ".join(i for i in final if i.upper().startswith("RUN "))
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", installs), "no compilers in the final image"
    for instr in (i for s in all_stages for i in s if i.split()[0].upper() in ("ENV", "ARG")):
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|_KEY)\w*\s*=\s*\S", instr, re.I), f"secret in a layer: {instr}"
    assert (REPO_ROOT / ".dockerignore").read_text().count(".venv")
    # The wheel carries the example and the license, so the image runs without a copy of the checkout, and
    # installs exactly one ONNX Runtime (an extra: `cpu`, or `gpu` alone, never the CPU build then replaced).
    build = all_stages[0]
    copied = {src for i in build if i.upper().startswith("COPY ") for src in i.split()[1:-1]}
    assert {"examples", "LICENSE", "pyproject.toml", "setup.py"} <= copied  # setup.py: the compiled codec
    assert not any("DRIFTLINE_MODEL_DIR" in i or "/app/examples" in i for i in final), "the example is in the wheel"
    installs = " ".join(i for i in build if i.upper().startswith(("RUN ", "ARG ")))
    assert "uninstall" not in installs
    if name == "Dockerfile":
        assert 'ARG EXTRAS="cpu"' in installs and '".[${EXTRAS}]"' in installs
    else:
        assert '".[gpu]"' in installs and not re.search(r"\bonnxruntime(?!-gpu)", installs)


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    import kubernetes_validate

    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "keda-scaledobject.yaml", "podmonitor.yaml"):
            continue  # a kustomize file, KEDA's and the Prometheus operator's CRDs: not in the core API schemas
        for doc in docs(path):
            kubernetes_validate.validate(doc, "1.31.0", strict=True)
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_fields_that_matter() -> None:
    dep = docs(K8S / "deployment.yaml")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["requests"]["cpu"] == c["resources"]["limits"]["cpu"] == "1"  # one process, one core
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert {"secretRef": {"name": "driftline-kafka"}} in c["envFrom"]
    config = docs(K8S / "configmap.yaml")[0]["data"]
    fields = {f"DRIFTLINE_{k.upper()}" for k in Settings.model_fields}
    unknown = sorted(k for k in config if k.split("__")[0] not in fields)
    assert not unknown, f"the config map names settings that do not exist: {unknown}"
    # No Secret in the manifests: `apply -k` would overwrite the real one. The kustomization says how to create
    # it, with every key the manifests read.
    assert all(d["kind"] != "Secret" for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml" for d in docs(p))
    how = (K8S / "kustomization.yaml").read_text()
    assert "create secret generic driftline-kafka" in how
    scaled, auth = docs(K8S / "keda-scaledobject.yaml")
    volumes = [v for p in ("deployment.yaml", "deployment-gpu.yaml", "trainer-job.yaml")
               for v in docs(K8S / p)[0]["spec"]["template"]["spec"]["volumes"]]
    keys = {("driftline-kafka", ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    keys |= {(v["secret"]["secretName"], item["key"])
             for v in volumes if "secret" in v for item in v["secret"]["items"]}
    assert keys == {("driftline-kafka", "DRIFTLINE_KAFKA__SASL_USERNAME"), ("driftline-kafka", "ca.crt"),
                    ("driftline-kafka", "DRIFTLINE_KAFKA__SASL_PASSWORD"), ("driftline-web", "token"),
                    ("driftline-control", "key"), ("driftline-pii", "key")}
    assert all(re.search(rf"create secret generic {name} .*--from-(literal|file)={re.escape(k)}=", how, re.S)
               for name, k in keys), how

    # The web server: every address of the pod, with the token from the driftline-web Secret, which the
    # PodMonitor sends too; no service-account token in any pod; read-only root filesystems everywhere.
    # the web settings are the workers' own (a trainer pod with them would look for a token it has no mount for)
    assert "DRIFTLINE_WEB_HOST" not in config and "DRIFTLINE_WEB_TOKEN_FILE" not in config
    for name in ("deployment.yaml", "deployment-gpu.yaml"):
        env = {e["name"]: e["value"] for e in docs(K8S / name)[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env == {"DRIFTLINE_WEB_HOST": "0.0.0.0",  # noqa: S104 - a pod's probes come from outside
                       "DRIFTLINE_WEB_TOKEN_FILE": "/etc/driftline/web/token"}
    policies = {d["metadata"]["name"]: d["spec"] for d in docs(K8S / "networkpolicy.yaml")}
    assert policies["driftline-trainer"]["podSelector"]["matchLabels"] == {"app": "driftline-trainer"}
    assert policies["driftline-trainer"]["ingress"] == []
    assert config["DRIFTLINE_CONTROL_KEY_FILE"] == "/etc/driftline/control/key"  # signed deployments, by default
    for name in ("deployment.yaml", "deployment-gpu.yaml", "trainer-job.yaml"):
        spec = docs(K8S / name)[0]["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["control-key"] == "/etc/driftline/control", name
    for name in ("deployment.yaml", "deployment-gpu.yaml"):
        spec = docs(K8S / name)[0]["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["web-token"] == "/etc/driftline/web", name
    monitor = docs(K8S / "podmonitor.yaml")[0]["spec"]["podMetricsEndpoints"][0]["authorization"]
    assert monitor == {"type": "Bearer", "credentials": {"name": "driftline-web", "key": "token"}}
    for name in ("deployment.yaml", "deployment-gpu.yaml", "trainer-job.yaml"):
        spec = docs(K8S / name)[0]["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in spec["containers"]), name

    gpu = docs(K8S / "deployment-gpu.yaml")[0]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    assert scaled["kind"] == "ScaledObject" and auth["kind"] == "TriggerAuthentication"
    assert "replicas" not in dep["spec"], "KEDA owns the worker Deployment's replicas"
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


def test_liveness_restarts_a_stalled_worker_within_bounds() -> None:
    """/healthz fails on a stall of LIVENESS_STALLS x stall_s (tests/unit/test_liveness.py); the probes add theirs."""
    stall_s = float(docs(K8S / "configmap.yaml")[0]["data"]["DRIFTLINE_STALL_S"])
    for name in ("deployment.yaml", "deployment-gpu.yaml"):
        c = docs(K8S / name)[0]["spec"]["template"]["spec"]["containers"][0]
        live, ready = c["livenessProbe"], c["readinessProbe"]
        assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
        restart_s = LIVENESS_STALLS * stall_s + live["periodSeconds"] * live.get("failureThreshold", 3)
        unready_s = stall_s + ready["periodSeconds"] * ready.get("failureThreshold", 3)
        assert unready_s < restart_s <= 10 * 60, (name, unready_s, restart_s)  # out of rotation first, then restarted


def test_the_trainer_job_runs_the_trainer_command() -> None:
    from driftline.streams.cli import build_parser
    from driftline.streams.cli.trainer import cmd_trainer

    job = docs(K8S / "trainer-job.yaml")[0]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "command" not in c, "the image's entrypoint is driftline; args are the command"
    args = build_parser().parse_args(c["args"])
    assert args.func is cmd_trainer and args.once  # exits when no request is left: a Job that completes
    assert {"configMapRef": {"name": "driftline-config"}} in c["envFrom"]
    assert {"secretRef": {"name": "driftline-kafka"}} in c["envFrom"]
    config = docs(K8S / "configmap.yaml")[0]["data"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert not mounts[config["DRIFTLINE_MODEL_DIR"]].get("readOnly"), "it registers challengers there"
    assert Path(config["DRIFTLINE_KAFKA__SSL_CA_FILE"]).parent.as_posix() in mounts
    defaults = Settings()
    assert job["spec"]["activeDeadlineSeconds"] > defaults.trainer_wait_s + defaults.trainer_shadow_wait_s


def test_the_pod_monitor_scrapes_every_worker() -> None:
    (monitor,) = docs(K8S / "podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert "podmonitor.yaml" in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name in ("deployment.yaml", "deployment-gpu.yaml"):
        template = docs(K8S / name)[0]["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items(), name
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports[endpoint["port"]] == Settings().web_port, name
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"} in endpoint["relabelings"]
