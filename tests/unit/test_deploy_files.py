"""Monitoring files in deploy/: promtool checks them, they only use metrics the worker exports, and the
Grafana dashboard imports into any Grafana (a data source variable, every panel filtered by model and worker)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from driftline.streams.metrics import Metrics
from driftline.streams.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
METRIC = re.compile(r"\b(?:driftline|process|python)_[a-z0-9_]+")


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool is needed (Debian's prometheus package; .ci/run installs it)"
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_rules_and_config_and_the_rules_fire_as_intended(tmp_path: Path) -> None:
    assert "SUCCESS: 9 rules found" in promtool("check", "rules", "rules.yml")
    # promtool checks that the token file exists: the config as it is, with the secret's path made here
    (tmp_path / "web_token").write_text("x" * 32)
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "/run/secrets/web_token" in config
    (tmp_path / "prometheus.yml").write_text(config.replace("/run/secrets/web_token", str(tmp_path / "web_token"))
                                             .replace("- rules.yml", f"- {DEPLOY / 'prometheus' / 'rules.yml'}"))
    promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS" in promtool("test", "rules", "rules.test.yml")  # stalled worker, dead letters, refused load, bias


def exported_names(metrics_text: str) -> set[str]:
    """Every name a query may use: the families (HELP lines) and their sample names (_total, _bucket, ...)."""
    names = set(re.findall(r"^# HELP (\S+)", metrics_text, re.M))
    names |= {n + s for n in names for s in ("_bucket", "_sum", "_count", "_total", "_info", "_created")}
    names |= set(re.findall(r"^((?:driftline|process|python)_[a-z0-9_]+)", metrics_text, re.M))
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
    # No data source uid of ours: the variable picks one of the Grafana it is imported into (provisioned here:
    # the default, Prometheus).
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    refs = [p["datasource"] for p in dashboard["panels"]] + [t["datasource"] for p in dashboard["panels"]
                                                            for t in p["targets"]]
    refs += [v["datasource"] for v in variables.values() if "datasource" in v]
    assert {(r["type"], r["uid"]) for r in refs} == {("prometheus", "${datasource}")}
    assert '"uid": "prometheus"' not in json.dumps(dashboard)


def test_every_dashboard_panel_is_filtered_by_model_and_worker() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "driftline.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    metrics = Metrics(CollectorRegistry())
    registry = metrics.registry
    for name in ("model", "instance"):
        var = variables[name]
        assert var["type"] == "query" and var["includeAll"] and var["multi"] and "allValue" not in var
        query = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
        assert query is not None and var["query"]["query"] == var["definition"]
        metric, label = query.groups()
        assert label == name and metric in exported_names(generate_latest(registry).decode())
    with_model = {c._name for c in vars(metrics).values() if "model" in getattr(c, "_labelnames", ())}
    assert {"driftline_requests", "driftline_model", "driftline_score"} <= with_model
    selectors = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric, labels in re.findall(r"\b((?:driftline|process)_[a-z0-9_]+)(\{[^}]*\})?", target["expr"]):
                selectors += 1
                where = f"{panel['title']}: {target['expr']}"
                assert 'instance=~"$instance"' in labels, where
                family = re.sub(r"_(total|bucket|sum|count|info)$", "", metric)
                assert ('model=~"$model' in labels) == (family in with_model), where
    assert selectors >= 20


def test_every_dashboard_query_parses_with_its_variables_filled_in(tmp_path: Path) -> None:
    """promtool parses each panel query (as a recording rule), $model and $instance filled as Grafana does."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "driftline.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    filled = [e.replace("$model", "fraud|housing").replace("$instance", "worker-1:6066|worker-2:6066") for e in exprs]
    assert not any("$" in e for e in filled)
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e}
                                                       for i, e in enumerate(filled)]}]}
    (tmp_path / "dashboard-rules.yml").write_text(json.dumps(rules))  # JSON is YAML
    assert f"SUCCESS: {len(filled)} rules found" in promtool("check", "rules", str(tmp_path / "dashboard-rules.yml"))
