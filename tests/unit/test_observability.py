"""deploy/observability: the alerting rules (checked and unit-tested by promtool), the
PrometheusRule that ships them to Kubernetes, their runbooks, and the Grafana dashboard.

Every metric name an alert or a panel uses must be one the code exports: the inventory is
read from the source (every Counter, Gauge, Histogram and Summary constructed in shared/ and
services/), and checked against the registries the service apps really build, so neither the
rules nor the dashboard can rot when a metric is renamed.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from yamllint import linter
from yamllint.config import YamlLintConfig

from services.assembler.main import create_app as create_assembler
from services.assembler.settings import AssemblerSettings
from services.download.main import create_app as create_download
from services.download.settings import DownloadSettings
from services.events.main import create_app as create_events
from services.events.settings import EventsServiceSettings
from services.ingest.main import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.janitor.main import create_app as create_janitor
from services.janitor.settings import JanitorSettings
from services.triage.main import create_app as create_triage
from services.triage.settings import TriageSettings
from shared import keys
from tests.unit.test_docs_links import anchors

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yaml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
PROMETHEUS_RULE = ROOT / "deploy/k8s/components/prometheus-operator/prometheusrule.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
# Metrics other branches add (the encryption at rest of the chunks; the publish linger): an
# alert or a panel uses them already. Remove a name once its code is merged: it is then
# checked like the rest.
PENDING = {
    "carve_integrity_errors_total",
    "carve_transit_calls_total",
    "carve_publish_lingered_total",
}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
PROMQL_WORDS |= {"group_left", "group_right", "inf", "nan", "Inf", "NaN"}
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "Summary": ("", "_count", "_sum", "_created"),
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run scripts/setup.sh (Debian package prometheus)"
    return path


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


# --- the inventory of exported metrics ----------------------------------------------------


def declared_metrics() -> dict[str, str]:
    """Every metric constructed in shared/ and services/: {name as given: its type}."""
    found: dict[str, str] = {}
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            kind = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if kind not in SUFFIXES:
                continue
            name = node.args[0] if node.args else None
            name = name or next((k.value for k in node.keywords if k.arg == "name"), None)
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found[name.value] = kind
    return found


def exported_names() -> set[str]:
    """The sample names Prometheus sees (a counter ``x`` is ``x_total``, and so on)."""
    names = set()
    for name, kind in declared_metrics().items():
        base = name.removesuffix("_total") if kind == "Counter" else name
        names |= {base + suffix for suffix in SUFFIXES[kind]}
    return names


def settings(cls: type[BaseSettings]) -> Any:
    return cls()


def test_the_inventory_holds_what_the_apps_register() -> None:
    """The source scan misses nothing the service apps really register (before they start)."""
    apps = [
        create_ingest(settings(IngestSettings)),
        create_assembler(settings(AssemblerSettings)),
        create_download(settings(DownloadSettings)),
        create_janitor(settings(JanitorSettings)),
        create_events(settings(EventsServiceSettings)),
        create_triage(settings(TriageSettings)),
    ]
    registered = {
        sample.name
        for app in apps
        for family in app[keys.REGISTRY].collect()
        for sample in family.samples
    }
    # Unlabelled metrics have samples at once; labelled ones appear once used: compare names.
    for app in apps:
        registered |= set(app[keys.REGISTRY]._names_to_collectors)
    declared, exported = declared_metrics(), exported_names()
    assert declared, "no metric found in the source"
    missing = {n for n in registered if n not in exported and n not in declared}
    assert missing == set()
    for expected in ("carve_check_up", "carve_queue_messages", "carve_carves"):
        assert expected in declared


def test_every_metric_is_documented() -> None:
    """An operator finds each metric the code declares somewhere in docs/."""
    docs = "".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    assert sorted(n for n in declared_metrics() if n not in docs) == []


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana panel's) reads."""
    expr = re.sub(r"\$\{?\w+\}?", "5m", expr)  # Grafana variables ($__rate_interval)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word not in PROMQL_WORDS:
            names.add(word)
    return names


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(carve_request_seconds_bucket"
        '{endpoint="x"}[$__rate_interval]))) > 1e3 and on () max(up offset 5m) '
        "/ ignoring(a) time() - carve_janitor_last_success_timestamp unless absent(x_total)"
    )
    names = metric_names(expr)
    assert names == {
        "carve_request_seconds_bucket",
        "up",
        "carve_janitor_last_success_timestamp",
        "x_total",
    }


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_names()
    used = {
        where: metric_names(expr)
        for where, expr in [
            *((f"alert {r['alert']}", r["expr"]) for r in rules()),
            *((f"panel expr {e}", e) for e in dashboard_exprs()),
        ]
    }
    unknown = {where: names - exported - PENDING for where, names in used.items()}
    assert {k: v for k, v in unknown.items() if v} == {}
    assert all(used.values()), "an expression without any metric"
    assert exported & set().union(*used.values())


# --- the rules ------------------------------------------------------------------------------


def test_yamllint_finds_nothing() -> None:
    """The same style as deploy/k8s (its .yamllint)."""
    config = YamlLintConfig(file=str(ROOT / "deploy" / "k8s" / ".yamllint"))
    problems = [
        f"{path.name}:{problem.line}: {problem}"
        for path in (RULES, RULE_TESTS)
        for problem in linter.run(path.read_text(), config, str(path))
    ]
    assert problems == []


def test_promtool_checks_the_rules() -> None:
    run = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules())} rules found" in run.stdout


def test_promtool_unit_tests_pass() -> None:
    run = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_promtool_test_where_it_fires() -> None:
    """With promtool's pass above, each alert is seen firing (labels and annotations exact)."""
    cases = [
        c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]
    ]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    alerts = {r["alert"] for r in rules()}
    assert fired == alerts
    assert quiet == alerts, "each alert also needs a case where it stays quiet"


def test_promtool_tests_fail_when_a_rule_breaks(tmp_path: Path) -> None:
    """The suite runs promtool for real: a rule that no longer fires fails its test."""
    broken = yaml.safe_load(RULES.read_text())
    for group in broken["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "CarveStuckReceiving":
                rule["expr"] = rule["expr"].replace("> 5400", "> 86400")
    (tmp_path / RULES.name).write_text(yaml.safe_dump(broken))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    run = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / RULE_TESTS.name)],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "alertname: CarveStuckReceiving, time: 20m" in run.stdout + run.stderr


def test_every_alert_has_a_runbook_and_says_what_it_means() -> None:
    sections = anchors(RUNBOOKS)
    seen = set()
    for rule in rules():
        alert = rule["alert"]
        assert re.fullmatch(r"Carve[A-Z][A-Za-z0-9]+", alert), alert
        assert alert not in seen, f"{alert} twice"
        seen.add(alert)
        assert rule["labels"]["severity"] in {"warning", "critical"}, alert
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], alert
        assert notes["runbook_url"] == f"docs/runbooks.md#{alert.lower()}", alert
        assert alert.lower() in sections, f"docs/runbooks.md has no section {alert}"
    headings = re.findall(r"^## (Carve\w+)$", RUNBOOKS.read_text(), re.MULTILINE)
    assert sorted(headings) == sorted(seen), "a runbook without an alert, or the reverse"
    sections_text = re.split(r"^## ", RUNBOOKS.read_text(), flags=re.MULTILINE)[1:]
    for text in sections_text:
        title = text.splitlines()[0]
        for part in ("**Means**", "**Look**", "**Do**"):
            assert part in text, f"runbook {title}: no {part}"
    required = {
        "CarveStuckReceiving",
        "CarveDeadLettersGrowing",
        "CarveAssemblerLagging",
        "CarveFinalizeFailures",
        "CarveVaultUnavailable",
        "CarveMongoDBUnavailable",
        "CarveWebhookDeliveriesDying",
        "CarveTarRefusalsSpiking",
        "CarveTriageRulesBroken",
        "CarveIntegrityErrors",
    }
    assert required <= seen


def test_thresholds_leave_room_for_what_the_services_do_on_their_own() -> None:
    """A carve is stuck only once the janitor had its chance (idle timeout, then a sweep);
    triage is stalled only once a whole scan could have finished."""
    by_name = {r["alert"]: r for r in rules()}
    janitor = JanitorSettings()
    stuck = float(re.findall(r"> (\d+)", by_name["CarveStuckReceiving"]["expr"])[0])
    assert stuck >= janitor.session_idle_timeout + janitor.janitor_interval + janitor.finalize_grace
    triage = TriageSettings()
    window = re.findall(r"\[(\d+)m\]", by_name["CarveTriageStalled"]["expr"])
    assert float(window[0]) * 60 > triage.triage_max_seconds + 30


def test_the_prometheus_rule_ships_the_same_rules() -> None:
    plain = yaml.safe_load(RULES.read_text())
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == plain, "copy the groups of deploy/observability/alerts.yaml"
    # tests/unit/test_k8s.py checks that the example overlay renders it unchanged.


# --- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_is_valid_promql_throughout(tmp_path: Path) -> None:
    """Every panel's query as a recording rule, so that promtool parses each of them."""
    exprs = dashboard_exprs()
    records = [
        {"record": f"dashboard:panel_{i}", "expr": re.sub(r"\$__rate_interval", "5m", expr)}
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_dashboard_shows_what_operators_need() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"]
    (variable,) = board["templating"]["list"]
    assert variable == {**variable, "name": "datasource", "type": "datasource"}
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    wanted = {
        "carve_starts_total",  # hosts' requests
        "carve_rejections_total",  # and refusals
        "carve_blocks_total",  # blocks/s
        "carve_request_seconds_bucket",  # p99 latency
        "carve_queue_messages",  # queue depth and dead letters
        "carve_assembler_lag_seconds_bucket",
        "carve_finalize_seconds_bucket",
        "carve_carves",  # carves by status
        "carve_download_requests_total",
        "carve_auth_failures_total",
        "carve_backend_unavailable_total",
        "carve_check_up",
        "carve_events_published_total",
        "carve_webhook_attempts_total",
        "carve_triage_scans_total",
    }
    assert wanted <= used, wanted - used


@pytest.mark.parametrize("expr", ["rate(x[5m]) > 1", "carve_carves"])
def test_metric_names_of_simple_expressions(expr: str) -> None:
    assert metric_names(expr) == {"x" if "rate" in expr else "carve_carves"}
