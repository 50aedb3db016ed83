"""deploy/alertmanager: amtool accepts it, every rule's severity is routed, routes go where the README says, and the
templates render with the dashboard and report links. A real Alertmanager delivering real alerts from a real
Prometheus: tests/integration/test_observability.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from driftline.streams.settings import REPO_ROOT

ALERTMANAGER = REPO_ROOT / "deploy" / "alertmanager"


def amtool(*args: str) -> str:
    exe = shutil.which("amtool")
    assert exe, "amtool is needed (Debian's prometheus-alertmanager package; .ci/run installs it)"
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def local_config(tmp_path: Path) -> Path:
    """The config as shipped, its template glob pointed at the repository's templates."""
    text = (ALERTMANAGER / "alertmanager.yml").read_text()
    assert "/etc/alertmanager/templates/*.tmpl" in text
    out = tmp_path / "alertmanager.yml"
    out.write_text(text.replace("/etc/alertmanager/templates/", f"{ALERTMANAGER / 'templates'}/"))
    return out


def test_amtool_accepts_the_config_and_finds_the_templates(tmp_path: Path) -> None:
    out = amtool("check-config", str(local_config(tmp_path)))
    assert "SUCCESS" in out and " - 1 templates" in out and " - 5 receivers" in out


@pytest.mark.parametrize(("labels", "receivers"), [
    (["severity=page", "model=credit"], "pagerduty,slack-pages"),
    (["severity=ticket", "model=credit"], "email,slack-tickets"),
    (["severity=page", "model=fraud"], "slack-fraud,pagerduty,slack-pages"),
    (["severity=ticket", "model=fraud"], "slack-fraud,email,slack-tickets"),
    (["alertname=Other"], "slack-tickets"),  # nothing is dropped: the default catches unknown severities
])
def test_routes_by_severity_and_model(tmp_path: Path, labels: list[str], receivers: str) -> None:
    out = amtool("config", "routes", "test", f"--config.file={local_config(tmp_path)}",
                 f"--verify.receivers={receivers}", *labels)
    assert out.strip() == receivers


def test_every_rule_has_a_routed_severity() -> None:
    rules = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "rules.yml").read_text())["groups"][0]["rules"]
    routed = {m.split("=")[1].strip('"') for r in yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
              ["route"]["routes"] for m in r["matchers"] if m.startswith("severity=")}
    assert {r["labels"]["severity"] for r in rules} == routed == {"page", "ticket"}
    prometheus = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


@pytest.mark.parametrize("name", ["driftline.title", "driftline.text", "driftline.email"])
def test_the_templates_render_with_their_links(name: str) -> None:
    out = amtool("template", "render", f"--template.glob={ALERTMANAGER / 'templates' / '*.tmpl'}",
                 f'--template.text={{{{ template "{name}" . }}}}')
    assert out.strip() and "<no value>" not in out
    if name != "driftline.title":
        assert "https://driftline.example.com/" in out and "runbook" in out
