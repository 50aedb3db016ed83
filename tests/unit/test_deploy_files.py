"""Monitoring files in deploy/: promtool checks them, and they only use metrics the worker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from prometheus_client import CollectorRegistry, generate_latest

from driftline.streams.metrics import Metrics
from driftline.streams.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
METRIC = re.compile(r"\bdriftline_[a-z0-9_]+")


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool is needed (Debian's prometheus package; .ci/run installs it)"
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_rules_and_config_and_the_rules_fire_as_intended() -> None:
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", "rules.yml")
    promtool("check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool("test", "rules", "rules.test.yml")  # stalled worker, dead letters, refused load


def exported_names(metrics_text: str) -> set[str]:
    """Every name a query may use: the families (HELP lines) and their sample names (_total, _bucket, ...)."""
    names = set(re.findall(r"^# HELP (\S+)", metrics_text, re.M))
    names |= {n + s for n in names for s in ("_bucket", "_sum", "_count", "_total", "_info", "_created")}
    names |= set(re.findall(r"^(driftline_[a-z0-9_]+)", metrics_text, re.M))
    return names


def used_names() -> dict[str, set[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "driftline.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
    return {"dashboard": set(METRIC.findall(exprs)), "rules": set(METRIC.findall(rules))}


def test_dashboard_and_rules_use_only_declared_metrics() -> None:
    declared = exported_names(generate_latest(Metrics(CollectorRegistry()).registry).decode())
    for where, names in used_names().items():
        assert names, where
        assert names <= declared, f"{where} uses metrics the worker does not export: {sorted(names - declared)}"


def test_grafana_provisioning_points_at_the_dashboard_folder() -> None:
    dashboards = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "driftline.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in dashboards
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: prometheus" in datasource
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "driftline.json").read_text())
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {"prometheus"}
