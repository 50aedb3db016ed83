"""Readiness that catches a stalled agent, the dashboard in headless Chromium, and a real Prometheus scrape."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.schemas.catalog import SchemaCatalog
from driftline.schemas.codec import encode_many
from driftline.streams.kafka.broker import Broker
from driftline.streams.kafka.topics import ensure_topics
from driftline.streams.settings import REPO_ROOT, load_settings
from tests.certs import make_ca, sign
from tests.helpers import WorkerProcess, free_port, produce
from tests.unit.test_deploy_files import exported_names, used_names

pytestmark = pytest.mark.kafka
# The page and the scrape read the worker's metrics, whichever broker it uses: the embedded one only
# (both passed when this was written; the suite's time goes to tests where the broker matters).
ONE_BROKER = pytest.mark.parametrize("broker", ["tansu"], indirect=True)


def get(url: str, authorization: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(condition, worker: WorkerProcess, what: str, timeout_s: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert worker.alive(), worker.log()[-3000:]
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s; log: {worker.log()[-2000:]}"
        time.sleep(0.2)
    return result


def samples(metrics_text: str) -> dict[str, float]:
    """Every series as name{k="v",...} (labels sorted) → value."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def send_requests(bootstrap: str, topic: str, catalog: SchemaCatalog, generator, rng, n: int, bad: int = 0,  # type: ignore[no-untyped-def]
                  labels_to: str | None = None) -> int:
    """Produce ``n`` requests (and ``bad`` junk ones); with ``labels_to``, their labels there afterwards."""
    recs, labels = generator.generate(n, rng, start_ms=int(time.time() * 1000), step_ms=0)
    recs = [{**r, "ip_risk": r["ip_risk"] or 0.1} for r in recs]
    values = encode_many(catalog.latest("driftline.examples.CardTransaction"), recs)
    items = [(r["card_id"].encode(), v) for r, v in zip(recs, values, strict=True)]
    items += [(b"junk", b"not avro at all")] * bad
    sent = produce(bootstrap, topic, items)
    if labels_to is not None:
        outcomes = [{"request_id": r["request_id"], "label": "fraud" if y else "legit", "target": None,
                     "event_time": int(time.time() * 1000)} for r, y in zip(recs, labels.tolist(), strict=True)]
        encoded = encode_many(catalog.latest("driftline.Feedback"), outcomes)
        produce(bootstrap, labels_to, [(o["request_id"].encode(), v) for o, v in zip(outcomes, encoded, strict=True)],
                partitioner="murmur2_random")
    return sent


@ONE_BROKER  # the worker's own readiness; broker-independent
def test_readyz_catches_a_stalled_agent(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, batch_max="100", stall_s="3",
                           fault_stall_after_batches="5").start()
    base = f"http://127.0.0.1:{worker.port}"
    try:
        # Idle and healthy: ready (an empty topic is not a stall).
        wait_until(lambda: _up(base) and get(base + "/readyz")[0] == 200, worker, "ready before any traffic")
        send_requests(broker.bootstrap, settings.topic("requests"), catalog, generator, rng, 5000)
        status, body = wait_until(lambda: (r := get(base + "/readyz"))[0] == 503 and r, worker, "readyz 503")
        checks = json.loads(body)["checks"]
        assert checks["progress"].startswith("stalled") and checks["broker"] == "ok"
        assert checks["model:fraud"] == "ok"
        assert get(base + "/healthz")[0] == 200  # alive, but not ready: a restart is the cure
        got = samples(worker.metrics())
        assert got["driftline_ready{}"] == 0.0
        lag = sum(v for k, v in got.items() if k.startswith("driftline_consumer_lag{"))
        assert 4000 <= lag <= 5000  # at most 5 batches of 100 done before the stall
        assert "fault injection: the score agent stalls now" in worker.log()

        # driftline status shows the same backlog, the model and the provider the worker reports.
        from driftline.streams.cli.main import main as cli

        monkeypatch.setenv("DRIFTLINE_NAMESPACE", namespace)
        assert cli(["status", "--broker", broker.bootstrap, "--worker", base]) == 0
        screen = capsys.readouterr().out
        row = next(line for line in screen.splitlines() if line.strip().startswith(settings.topic("requests")))
        _, _, records, lag, *_ = row.split()  # topic, partitions, records, lag, size, retention
        assert 4000 <= int(lag) <= 5000 and int(records) == 5000
        assert "fraud: champion v1" in screen and "on CPUExecutionProvider" in screen and "LAST 5 ALERTS" in screen
    finally:
        worker.stop()


def _up(base: str) -> bool:
    try:
        return get(base + "/healthz")[0] == 200
    except OSError:
        return False


class _Values(HTMLParser):
    """Elements of the rendered dashboard that carry data-metric / data-sum and data-value."""

    def __init__(self) -> None:
        super().__init__()
        self.metric: dict[str, float] = {}
        self.sums: dict[str, float] = {}
        self.polls = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body" and a.get("data-polls"):
            self.polls = int(a["data-polls"] or 0)
        if a.get("data-value") is None:
            return
        if a.get("data-metric"):
            self.metric[str(a["data-metric"])] = float(a["data-value"] or "nan")
        if a.get("data-sum"):
            self.sums[str(a["data-sum"])] = float(a["data-value"] or "nan")


def chromium(*args: str, profile: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed for this test (.ci/run installs it: apt-get install chromium)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    done = subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@ONE_BROKER
def test_dashboard_numbers_match_metrics_in_headless_chromium(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    token = secrets.token_hex(16)
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, window_events="500", window_grace_s="0",
                           feedback="true", quality_window_labels="500", web_token=token).start()
    base = f"http://127.0.0.1:{worker.port}"
    try:
        wait_until(lambda: _up(base), worker, "the web server")
        # Without the token: 401 and nothing else, for driftline's data and Faust's own views alike;
        # the probes and the page itself (no data in it: it asks for the token) stay open.
        for path in ("/metrics", "/api/recent", "/router/", "/table/"):
            assert get(base + path) == (401, b""), path
        assert get(base + "/metrics", "Bearer wrong" + token)[0] == 401
        assert get(base + "/metrics", "Bearer \xe9")[0] == 401  # a byte that is not UTF-8: 401, not a 500
        assert get(base + "/metrics", f"bearer {token}")[0] == 200  # the scheme is case-insensitive (RFC 7235)
        assert get(base + "/healthz")[0] == 200 and get(base + "/")[0] == 200
        assert get(base + "/router/", f"Bearer {token}")[0] == 404  # Faust's views are off, not just hidden
        n = send_requests(broker.bootstrap, settings.topic("requests"), catalog, generator, rng, 3000, bad=25,
                          labels_to=settings.topic("feedback"))
        done = 'driftline_requests_total{model="fraud",outcome="predicted"}'
        dead = 'driftline_requests_total{model="fraud",outcome="dead_letter"}'

        def handled() -> bool:
            got = samples(worker.metrics())
            return got.get(done, 0) + got.get(dead, 0) >= n

        wait_until(lambda: _up(base) and handled(), worker, "every request handled")
        wait_until(lambda: json.loads(worker.page("/api/recent"))["windows"], worker, "a drift window")
        wait_until(lambda: samples(worker.metrics()).get(
            'driftline_labels_total{model="fraud",outcome="joined"}', 0) >= 3000, worker, "every label joined")
        # The token in the address's fragment: the page keeps it for the tab and sends it as a bearer token.
        dom = chromium("--virtual-time-budget=6000", "--dump-dom", f"{base}/#token={token}",
                       profile=tmp_path / "chrome")
        asked = chromium("--virtual-time-budget=3000", "--dump-dom", base + "/", profile=tmp_path / "chrome3")
        metrics = samples(worker.metrics())
        shot = REPO_ROOT / ".driftline" / "dashboard.png"  # git-ignored; docs/dashboard.png is a copy
        shot.parent.mkdir(exist_ok=True)
        chromium("--virtual-time-budget=6000", "--window-size=1400,1100", f"--screenshot={tmp_path / 'dash.png'}",
                 f"{base}/#token={token}", profile=tmp_path / "chrome2")
    finally:
        worker.stop()
    assert "needs the web token" in asked and '<form id="login">' in asked  # no token: the form, no data
    assert 'data-value="' not in asked
    page = _Values()
    page.feed(dom)
    assert page.polls >= 1, dom[:2000]
    assert page.metric, "no metric values on the page"
    for key, value in page.metric.items():
        assert metrics[key] == value, key
    assert page.sums["driftline_requests_total|outcome=predicted"] == metrics[done] == 3000
    assert page.sums["driftline_requests_total|outcome=dead_letter"] == 25
    assert 'driftline_dead_letters_total{model="fraud",reason="bad_magic_byte",stage="decode"}' in page.metric or \
        any(k.startswith("driftline_dead_letters_total") for k in page.metric)
    assert any(k.startswith("driftline_predictions_total") and 'variant="champion"' in k for k in page.metric)
    assert "<rect" in dom  # the drift heat map drew the window
    assert 'class="time"' in dom and 'class="legend"' in dom  # with a time axis and a colour legend
    assert any(k.startswith("driftline_quality{") for k in page.metric)  # quality from labels, on the page too
    png = (tmp_path / "dash.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    shot.write_bytes(png)


@ONE_BROKER
def test_a_real_prometheus_scrapes_the_worker(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    exe = shutil.which("prometheus")
    assert exe, "Debian's prometheus is needed for this test (.ci/run installs it: apt-get install prometheus)"
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "ca")
    cert, key = sign(pki, "ca", "worker", "IP:127.0.0.1")
    (tmp_path / "token").write_text(secrets.token_hex(16) + "\n")  # as a mounted Secret holds it
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path, web_token_file=str(tmp_path / "token"),
                           web_tls_cert_file=str(cert), web_tls_key_file=str(key))
    worker.token = (tmp_path / "token").read_text().strip()
    worker.ssl_context = ssl.create_default_context(cafile=str(ca))
    worker.start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    # The scrape job the production files use: HTTPS, the CA, the token from a file.
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{REPO_ROOT / 'deploy' / 'prometheus' / 'rules.yml'}']\n"
        f"scrape_configs:\n  - job_name: driftline\n    scheme: https\n    tls_config: {{ca_file: '{ca}'}}\n"
        f"    authorization: {{credentials_file: '{tmp_path / 'token'}'}}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{worker.port}']\n"
    )
    prom = subprocess.Popen([exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prom.log").open("wb"))
    try:
        n = send_requests(broker.bootstrap, settings.topic("requests"), catalog, generator, rng, 1000)
        query = f"http://127.0.0.1:{port}/api/v1/query?query=sum(driftline_requests_total)"

        def scraped() -> float:
            try:
                status, body = get(query)
            except OSError:
                return 0.0
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return float(result[0]["value"][1]) if result else 0.0

        assert prom.poll() is None, (tmp_path / "prom.log").read_text()[-2000:]
        wait_until(lambda: scraped() >= n, worker, "Prometheus reading the worker's counter back", timeout_s=90)
        cpu = samples(worker.metrics())  # where the CPU went: the score loop and its stages, by thread
        for series in ('driftline_score_cpu_seconds_total{stage="process"}',
                       'driftline_thread_cpu_seconds_total{thread="MainThread"}'):
            assert cpu.get(series, 0.0) > 0, series
        for thread in ("driftline-consume", "driftline-deliveries", "rdk:broker"):  # 1,000 requests: < 1 tick
            assert f'driftline_thread_cpu_seconds_total{{thread="{thread}"}}' in cpu, thread
        per_request = urllib.parse.quote("sum by (thread) (rate(driftline_thread_cpu_seconds_total[5m])) / "
                                         "scalar(sum(rate(driftline_requests_total[5m])))")  # the README's query
        status, body = get(f"http://127.0.0.1:{port}/api/v1/query?query={per_request}")
        assert status == 200 and json.loads(body)["data"]["resultType"] == "vector", body[:500]
        live = exported_names(worker.metrics())
        for where, names in used_names().items():  # the deploy files against this live /metrics
            assert names <= live, f"{where}: {sorted(names - live)}"
        status, body = get(f"http://127.0.0.1:{port}/api/v1/rules")
        groups = json.loads(body)["data"]["groups"]
        assert status == 200 and groups and all(r["health"] != "err" for g in groups for r in g["rules"])
    finally:
        prom.terminate()
        prom.wait(20)
        worker.stop()


@ONE_BROKER
def test_a_payload_from_a_topic_is_shown_as_text_not_run_in_chromium(
    broker: Broker, namespace: str, tmp_path: Path
) -> None:
    """A control record keyed with markup: its bad_control_record alert quotes the key on the dashboard as text."""
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    payload = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned2'</script>"
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path).start()
    base = f"http://127.0.0.1:{worker.port}"
    try:
        wait_until(lambda: _up(base), worker, "the web server")
        produce(broker.bootstrap, settings.topic("models"), [(payload.encode(), b'{"model": "x"}')])
        wait_until(lambda: any("onerror" in a["message"] for a in json.loads(worker.page("/api/recent"))["alerts"]),
                   worker, "the alert quoting the key")
        dom = chromium("--virtual-time-budget=4000", "--dump-dom", base + "/", profile=tmp_path / "chrome")
    finally:
        worker.stop()
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom, re.S).group(1)  # type: ignore[union-attr]
    assert "&lt;img src=x onerror" in dom  # shown, escaped
    assert "<img src=" not in dom and "<script>document.title" not in dom  # never an element


class Hook:
    """A local HTTP endpoint standing in for Slack and PagerDuty: keeps every JSON body posted, by path."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.received: list[tuple[str, dict]] = []  # type: ignore[type-arg]
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:  # type: ignore[type-arg]
        return [body for p, body in list(self.received) if p == path]

    def close(self) -> None:
        self.server.shutdown()


@ONE_BROKER
def test_alertmanager_routes_real_alerts_by_severity_and_model(
    broker: Broker, namespace: str, tmp_path: Path, catalog: SchemaCatalog, generator, rng  # type: ignore[no-untyped-def]
) -> None:
    """The shipped rules and Alertmanager configuration, run for real: a refused deployment pages (PagerDuty and
    Slack), dead letters open a ticket (Slack), and the fraud model's alerts also reach its own channel.

    Changed for the test only: the rules' ``for:`` durations (0s), Alertmanager's grouping waits (1s), and where
    notifications go (a local endpoint for Slack and PagerDuty, a closed port for e-mail).
    """
    import yaml

    from driftline.inference.deployment import Deployment

    prometheus_exe, alertmanager_exe = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    assert prometheus_exe and alertmanager_exe, "Debian's prometheus and prometheus-alertmanager (.ci/run has them)"
    settings = load_settings(broker=broker.bootstrap, namespace=namespace)
    ensure_topics(settings)
    hook = Hook()
    secrets_dir = tmp_path / "am-secrets"
    secrets_dir.mkdir()
    (secrets_dir / "slack-webhook-url").write_text(f"http://127.0.0.1:{hook.port}/slack\n")
    (secrets_dir / "pagerduty-routing-key").write_text("pd-routing-key-0123456789abcdef\n")
    (secrets_dir / "smtp-password").write_text("smtp-secret\n")
    shipped = (REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text()
    templates = REPO_ROOT / "deploy" / "alertmanager" / "templates"
    am = yaml.safe_load(shipped.replace("/etc/alertmanager/secrets/", f"{secrets_dir}/")
                        .replace("/etc/alertmanager/templates/", f"{templates}/"))
    am["route"].update(group_wait="1s", group_interval="1s")
    am["global"].update(smtp_smarthost=f"127.0.0.1:{free_port()}", smtp_require_tls=False)
    pagerduty = next(r for r in am["receivers"] if r["name"] == "pagerduty")["pagerduty_configs"][0]
    pagerduty["url"] = f"http://127.0.0.1:{hook.port}/pagerduty"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am))
    rules = re.sub(r"\n(\s+)for: \S+", r"\n\1for: 0s", (REPO_ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    (tmp_path / "rules.yml").write_text(rules)
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{tmp_path / 'rules.yml'}']\n"
        f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
        f"scrape_configs:\n  - job_name: driftline\n    static_configs:\n      - targets: ['127.0.0.1:{{port}}']\n"
    )
    worker = WorkerProcess(broker.bootstrap, namespace, tmp_path).start()
    config = (tmp_path / "prometheus.yml").read_text().replace("{port}", str(worker.port))
    (tmp_path / "prometheus.yml").write_text(config)
    alertmanager = subprocess.Popen(
        [alertmanager_exe, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
         f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "am.log").open("wb"))
    prom = subprocess.Popen([prometheus_exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prom.log").open("wb"))
    try:
        worker.wait_log("consuming")
        # a ticket: a fifth of the requests are junk (DriftlineDeadLetterRate, over 5 %)
        send_requests(broker.bootstrap, settings.topic("requests"), catalog, generator, rng, 800, bad=200)
        # a page: a deployment of a version the registry does not hold is refused (DriftlineModelLoadFailed)
        promote = Deployment("fraud", "1").promote("99", int(time.time() * 1000)).to_dict()
        produce(broker.bootstrap, settings.topic("models"), [(b"fraud", json.dumps(promote).encode())])

        def delivered() -> bool:
            slack = {(b["channel"], t) for b in hook.at("/slack")
                     for t in re.findall(r"\] (\w+)", b["attachments"][0]["title"])}
            return {("#driftline-pages", "DriftlineModelLoadFailed"), ("#driftline", "DriftlineDeadLetterRate"),
                    ("#fraud-models", "DriftlineModelLoadFailed"), ("#fraud-models", "DriftlineDeadLetterRate")
                    } <= slack and bool(hook.at("/pagerduty"))

        def alive() -> None:
            for log, p in (("prom.log", prom), ("am.log", alertmanager)):
                assert p.poll() is None, (tmp_path / log).read_text()[-2000:]

        deadline = time.monotonic() + 120
        while not delivered():
            alive()
            assert worker.alive(), worker.log()[-2000:]
            assert time.monotonic() < deadline, f"not delivered within 120s: {hook.received}"
            time.sleep(0.5)
    finally:
        prom.terminate()
        alertmanager.terminate()
        prom.wait(20)
        alertmanager.wait(20)
        worker.stop()
        hook.close()
    pages = hook.at("/pagerduty")
    paged = {p["payload"]["summary"].split("] ")[1].split(" ")[0] for p in pages}
    # page-severity alerts only (the starting worker's not-ready moment may page too: its for: is 0s here)
    assert "DriftlineModelLoadFailed" in paged and paged <= {"DriftlineModelLoadFailed", "DriftlineWorkerNotReady"}
    assert all(p["routing_key"] == "pd-routing-key-0123456789abcdef" for p in pages)  # from its file
    assert any(link["href"] == "https://driftline.example.com/" for link in pages[0]["links"])
    text = next(b for b in hook.at("/slack") if b["channel"] == "#driftline")["attachments"][0]
    assert "model fraud" in text["title"] and "(ticket)" in text["title"]
    assert "Dashboard: https://driftline.example.com/" in text["text"]
    assert "Report: driftline report --model fraud --window 24h" in text["text"]
    assert "dead-lettered" in text["text"]  # the rule's own summary
