"""The Grafana dashboard and the Prometheus rules query what `etl-jobs metrics` serves.

Every PromQL expression in deploy/grafana/dashboards/*.json and deploy/prometheus/rules/ is parsed
(a small tokenizer: metric names, label matchers, grouping labels, functions) and checked against a
real endpoint: the `etl-jobs metrics` process on a PostgreSQL job table holding jobs in every state
the expressions are about. promtool (Debian's `prometheus` package) checks the rules and the
configuration, and runs the alerts on made-up series, when it is installed; the rules' structure
is checked either way.
"""

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etl_pipelines.metrics import QueueCollector
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines.store.models import utcnow
from etl_pipelines_tests.harness import BIN, REPO, Deployment, free_port, poll
from etl_pipelines_tests.test_stats import QUEUES, add, job, retry

RULES = sorted((REPO / "deploy/prometheus/rules").glob("*.yml"))
PROMETHEUS_YML = REPO / "deploy/prometheus/prometheus.yml"
DASHBOARDS = sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))


def promtool() -> str:
    """promtool's path: `make test` installs it (Debian's prometheus package); missing, a failure."""
    found = shutil.which("promtool")
    assert found, "promtool is not installed: apt-get install -y --no-install-recommends prometheus"
    return found


# --- PromQL, as much of it as the files use: a tokenizer and a walk over its tokens -------------

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<range>\[[^\]]*\])
    |(?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}])
    """,
    re.VERBOSE,
)
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile"}
AGGREGATIONS |= {"count_values", "group"}
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count_over_time", "delta", "deriv", "floor", "histogram_quantile", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "max_over_time",
    "min_over_time", "predict_linear", "quantile_over_time", "rate", "resets", "round", "scalar",
    "sort", "sort_desc", "sum_over_time", "time", "timestamp", "vector",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
MATCH_OPS = {"=", "!=", "=~", "!~"}


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)


@dataclass
class Query:
    expr: str
    selectors: list[Selector] = field(default_factory=list)
    grouping: list[str] = field(default_factory=list)  # labels named in by/without/on/ignoring/group_*
    functions: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read {expr[at:]!r} in {expr!r}")
        if match.lastgroup != "ws":
            tokens.append((match.lastgroup or "", match.group()))
        at = match.end()
    return tokens


def unquote(token: str) -> str:
    return token[1:-1] if token[0] == "`" else json.loads('"' + token[1:-1].replace('\\"', '"') + '"')


def parse(expr: str) -> Query:
    """The selectors, grouping labels and functions of a PromQL expression; ValueError on anything
    this reader does not know (so a new construct in the files is looked at, not skipped)."""
    tokens = tokenize(expr)
    query = Query(expr)
    i = 0

    def at(k: int) -> tuple[str, str]:
        return tokens[k] if k < len(tokens) else ("end", "")

    def matchers(k: int) -> tuple[list[tuple[str, str, str]], int]:
        """Label matchers from the `{` at k; returns them and the index after `}`."""
        found, k = [], k + 1
        while at(k)[1] != "}":
            (kind, label), (_, op), (vkind, value) = at(k), at(k + 1), at(k + 2)
            if kind != "ident" or op not in MATCH_OPS or vkind != "string":
                raise ValueError(f"bad label matcher at {label!r} in {expr!r}")
            found.append((label, op, unquote(value)))
            k += 3
            if at(k)[1] == ",":
                k += 1
            elif at(k)[1] != "}":
                raise ValueError(f"expected , or }} after {label} in {expr!r}")
        return found, k + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = at(i + 1)[1]
        if kind == "ident" and text in GROUPING:
            i += 1
            if at(i)[1] == "(":
                i += 1
                while at(i)[1] != ")":
                    if at(i)[0] == "ident":
                        query.grouping.append(at(i)[1])
                    elif at(i)[1] != ",":
                        raise ValueError(f"bad grouping list in {expr!r}")
                    i += 1
                i += 1
        elif kind == "ident" and text in KEYWORDS:
            i += 1
        elif kind == "ident" and (following == "(" or (text in AGGREGATIONS and following in GROUPING)):
            if text not in FUNCTIONS:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
            query.functions.append(text)
            i += 1
        elif kind == "ident":
            selector = Selector(text)
            i += 1
            if at(i)[1] == "{":
                selector.matchers, i = matchers(i)
            query.selectors.append(selector)
        elif text == "{":
            found, i = matchers(i)
            names = [value for label, op, value in found if label == "__name__" and op == "="]
            if not names:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            query.selectors.append(Selector(names[0], [m for m in found if m[0] != "__name__"]))
        elif kind in ("string", "range", "duration", "number", "op"):
            i += 1
        else:
            raise ValueError(f"unexpected {text!r} in {expr!r}")
    if not query.selectors:
        raise ValueError(f"no metric in {expr!r}")
    return query


def test_the_promql_reader_finds_names_matchers_and_grouping() -> None:
    query = parse(
        'max by (queue, quantile) (etl_jobs_time_to_start_seconds{queue=~"$queue", quantile="0.9"}) > 60'
        " and on(queue) rate(x_total[$__rate_interval] offset 5m) unless {__name__=\"y\", a!='b'}"
    )
    assert [(s.metric, s.matchers) for s in query.selectors] == [
        ("etl_jobs_time_to_start_seconds", [("queue", "=~", "$queue"), ("quantile", "=", "0.9")]),
        ("x_total", []),
        ("y", [("a", "!=", "b")]),
    ]
    assert query.grouping == ["queue", "quantile", "queue"] and query.functions == ["max", "rate"]
    assert [s.metric for s in parse('sum(a) by (q) / (b + c{d="e"}) > bool 1e3').selectors] == ["a", "b", "c"]
    for bad in ("nosuchfn(a)", "a{b}", "a{b=c}", '{a="b"}', "1 + 2", "a $ b"):
        with pytest.raises(ValueError):
            parse(bad)


# --- What the files query --------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def label_values(query: str) -> Query:
    """Grafana's `label_values(metric, label)` variable query, as a selector plus the label."""
    match = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)", query)
    assert match, f"unsupported variable query {query!r}"
    parsed = parse(match.group(1))
    parsed.grouping.append(match.group(2))
    return parsed


def queries() -> list[tuple[str, Query, set[str]]]:
    """(where, parsed expression, labels its text templates use) for every expression in the files."""
    found: list[tuple[str, Query, set[str]]] = []
    for rule in rules():
        templates = " ".join(str(v) for v in rule.get("annotations", {}).values())
        used = set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", templates))
        found.append((f"rule {rule['alert']}", parse(rule["expr"]), used))
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                used = set(
                    re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", target.get("legendFormat", ""))
                )
                found.append((f"{name} panel {panel['title']!r}", parse(target["expr"]), used))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                found.append(
                    (f"{name} variable {variable['name']}", label_values(variable["query"]["query"]), set())
                )
    return found


# --- The endpoint: the real `etl-jobs metrics` on a real job table ---------------------------

Families = dict[str, list[dict[str, str]]]  # metric name -> each sample's labels


def fill(store: JobStore) -> None:
    """Jobs in every state the metrics count: queued, started, waiting for a retry (due long ago:
    overdue; and not yet due), failed and completed in the last hour."""
    now = utcnow()
    started = {"started_at": now - timedelta(seconds=30)}
    ended = {**started, "finished_at": now - timedelta(seconds=10)}
    add(
        store,
        [
            job("hq", "high", JobStatus.QUEUED, now, age=120),
            job("hs", "high", JobStatus.STARTED, now, age=40, heartbeat_at=now, **started),
            retry("hr-overdue", "high", now, due_in=-300),
            retry("hr-pending", "high", now, due_in=600),
            job("hf", "high", JobStatus.FAILED, now, age=50, error="E", **ended),
            job("hc", "high", JobStatus.COMPLETED, now, age=60, result=1, **ended),
            job("mq", "medium", JobStatus.QUEUED, now, age=10),
            job("lc", "low", JobStatus.COMPLETED, now, age=90, result=1, **ended),
        ],
    )


def families(text: str) -> Families:
    return {
        family.name: [sample.labels for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode() if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.fixture(scope="module")
def served(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One scrape of `etl-jobs metrics`, started as users start it, in its own process group."""
    from etl_pipelines_tests.conftest import _ETL_VARS

    fill(JobStore(pg_url))
    home = tmp_path_factory.mktemp("metrics_home")
    env = {k: v for k, v in os.environ.items() if k not in _ETL_VARS}
    env |= {"DAGSTER_HOME": str(home), "ETL_DATABASE_URL": pg_url, "ETL_QUEUES": ",".join(QUEUES)}
    deployment = Deployment(home=home, database_url=pg_url, env=env)
    port = free_port()
    server = deployment.start("metrics", [str(BIN / "etl-jobs"), "metrics", "--port", str(port)])
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        # Until it answers, or until it has exited (then its output says why).
        text = poll(lambda: scrape(url) or server.process.poll() is not None, 60, 0.1, "etl-jobs metrics")
        assert isinstance(text, str), server.output()
    finally:
        server.stop()
    assert server.gone(), server.output()
    return text


def with_up(found: Families) -> Families:
    """`up` is Prometheus's own, per scrape target: its labels are the job (prometheus.yml's
    job_name) and the instance."""
    (job,) = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    instances = [{"job": job["job_name"], "instance": t} for t in job["static_configs"][0]["targets"]]
    return {**found, "up": instances}


def problems(found: Families) -> list[str]:
    """What the files query that `found` does not have: a metric, a label, a label value."""
    wrong = []
    for where, query, used in queries():
        selector_labels: set[str] = set()
        for selector in query.selectors:
            samples = found.get(selector.metric)
            if not samples:
                wrong.append(f"{where}: {selector.metric} is not served")
                continue
            labels = {label for sample in samples for label in sample}
            selector_labels |= labels
            for label, op, value in selector.matchers:
                if label not in labels:
                    wrong.append(f"{where}: {selector.metric} has no label {label} (has {sorted(labels)})")
                elif op == "=" and "$" not in value and value not in {s.get(label) for s in samples}:
                    wrong.append(f"{where}: no {selector.metric}{{{label}={value!r}}} is served")
        for label in query.grouping:
            if label not in selector_labels:
                wrong.append(f"{where}: groups by {label}, which none of its metrics has")
        # A legend's or an annotation's label must survive the aggregation (its by-list), if any.
        kept = set(query.grouping) if query.functions and query.grouping else selector_labels
        for label in used - kept:
            wrong.append(f"{where}: its text uses label {label}, which its result does not have")
    return wrong


def test_every_metric_and_label_the_files_query_is_served(served: str) -> None:
    assert queries(), "no expressions found"
    assert problems(with_up(families(served))) == []
    # The new gauges, on the real table: of the two retries in high, one due 300 s ago.
    values = {
        (sample.name, sample.labels.get("queue")): sample.value
        for family in text_string_to_metric_families(served)
        for sample in family.samples
    }
    assert values[("etl_jobs_retries_pending", "high")] == 2
    assert values[("etl_jobs_retries_overdue", "high")] == 1
    assert [values[("etl_jobs_retries_overdue", q)] for q in QUEUES[1:]] == [0, 0, 0]
    assert 300 <= values[("etl_jobs_oldest_overdue_retry_seconds", "high")] < 360
    assert [q for name, q in values if name == "etl_jobs_oldest_overdue_retry_seconds"] == ["high"]


def test_the_checker_would_notice_a_missing_metric_label_or_value(served: str) -> None:
    """The check above is not vacuous: take a metric, a label or a label value away, and it says so."""
    found = with_up(families(served))
    without = {k: v for k, v in found.items() if k != "etl_jobs_retries_overdue"}
    assert any("etl_jobs_retries_overdue is not served" in p for p in problems(without))
    unlabelled = {**found, "etl_jobs_time_to_start_seconds": [{"queue": "high"}]}
    assert any("has no label quantile" in p for p in problems(unlabelled))
    no_high = {**found, "etl_jobs_oldest_waiting_seconds": [{"queue": "low"}]}
    assert any("etl_jobs_oldest_waiting_seconds{queue='high'}" in p for p in problems(no_high))


def test_the_files_query_what_the_collector_yields_fast_tier() -> None:
    """The same check on the collector over an in-memory job table (no services), so the fast tier
    catches a renamed metric before the endpoint test runs."""
    store = JobStore.in_memory()
    fill(store)
    registry = CollectorRegistry()
    registry.register(QueueCollector(store, QUEUES))
    assert problems(with_up(families(generate_latest(registry).decode()))) == []


# --- The rules' structure, always; promtool where it is installed -----------------------------

DURATION = re.compile(r"(\d+(ms|[smhdwy]))+")


def test_rules_are_well_formed_alerts_with_their_thresholds_documented() -> None:
    assert RULES, "no rule files"
    names = []
    for path in RULES:
        document = yaml.safe_load(path.read_text())
        assert set(document) == {"groups"}, path
        for group in document["groups"]:
            assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"], path
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
                assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
                assert isinstance(rule["expr"], str) and parse(rule["expr"]).selectors
                assert DURATION.fullmatch(str(rule.get("for", "0s"))), rule["alert"]
                assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                annotations = rule["annotations"]
                assert {"summary", "description", "threshold"} <= set(annotations), rule["alert"]
                assert all(isinstance(v, str) and v.strip() for v in annotations.values()), rule["alert"]
                names.append(rule["alert"])
    assert len(names) == len(set(names))
    # What the issue asks the alerts to cover, each by the metric it is about.
    about = {metric.metric for rule in rules() for metric in parse(rule["expr"]).selectors}
    assert {
        "up",
        "etl_jobs_waiting",
        "etl_jobs_oldest_waiting_seconds",
        "etl_jobs_time_to_start_seconds",
        "etl_jobs_failed_recent",
        "etl_jobs_retries_overdue",
    } <= about


def test_promtool_accepts_the_rules_and_the_configuration() -> None:
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", *map(str, RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The configuration, with the rule files it names (relative to it, as in the container).
    checked = subprocess.run(
        [tool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(RULES)} rule files found" in checked.stdout


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    rendered = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


# Made-up scrapes every 15 s for 20 minutes (81 values) and which alerts must fire at the end, on
# which labels; an alert not listed for a case must not fire.
ALERT_CASES: list[tuple[str, list[dict[str, str]], dict[str, list[dict[str, str]]]]] = [
    (
        "endpoint down for 20 minutes",
        [series("up", "0x80", job="etl_jobs", instance="metrics:9464")],
        {"EtlJobsMetricsDown": [{"job": "etl_jobs", "instance": "metrics:9464"}]},
    ),
    (
        "a high job waiting 10 min, a low one 40 min: only high is late",
        [
            series("etl_jobs_oldest_waiting_seconds", "600x80", queue="high"),
            series("etl_jobs_oldest_waiting_seconds", "2400x80", queue="low"),
            series("etl_jobs_waiting", "400x80", queue="low"),
        ],
        {"EtlJobsHighQueueWaiting": [{"queue": "high"}]},
    ),
    (
        "a low job waiting 2 h behind 600 others",
        [
            series("etl_jobs_oldest_waiting_seconds", "7200x80", queue="low"),
            series("etl_jobs_waiting", "600x80", queue="low"),
        ],
        {"EtlJobsQueueWaiting": [{"queue": "low"}], "EtlJobsBacklog": [{"queue": "low"}]},
    ),
    (
        "p90 time to start: high 2 min, medium 20 min, p99 high 1 h",
        [
            series("etl_jobs_time_to_start_seconds", "120x80", queue="high", quantile="0.9"),
            series("etl_jobs_time_to_start_seconds", "3600x80", queue="high", quantile="0.99"),
            series("etl_jobs_time_to_start_seconds", "1200x80", queue="medium", quantile="0.9"),
            series("etl_jobs_time_to_start_seconds", "2400x80", queue="low", quantile="0.9"),
        ],
        {
            "EtlJobsHighQueueSlowToStart": [{"queue": "high", "quantile": "0.9"}],
            "EtlJobsSlowToStart": [{"queue": "low", "quantile": "0.9"}],
        },
    ),
    (
        "failures: 6 of 100 in high, 3 of 5 in low, 2 of 2 in medium",
        [
            series("etl_jobs_failed_recent", "6x80", queue="high"),
            series("etl_jobs_completed_recent", "94x80", queue="high"),
            series("etl_jobs_failed_recent", "3x80", queue="low"),
            series("etl_jobs_completed_recent", "2x80", queue="low"),
            series("etl_jobs_failed_recent", "2x80", queue="medium"),
            series("etl_jobs_completed_recent", "0x80", queue="medium"),
        ],
        {"EtlJobsFailing": [{"queue": "high"}], "EtlJobsFailureShareHigh": [{"queue": "low"}]},
    ),
    (
        "a retry overdue in high; many pending in low, none overdue",
        [
            series("etl_jobs_retries_overdue", "1x80", queue="high"),
            series("etl_jobs_retries_pending", "1x80", queue="high"),
            series("etl_jobs_retries_overdue", "0x80", queue="low"),
            series("etl_jobs_retries_pending", "30x80", queue="low"),
        ],
        {"EtlJobsRetriesOverdue": [{"queue": "high"}], "EtlJobsRetriesPiling": [{"queue": "low"}]},
    ),
    (
        "a retry overdue for one minute only: within the alert's for",
        [series("etl_jobs_retries_overdue", "0x75 1x5", queue="high")],
        {},
    ),
]


def test_each_alert_fires_on_what_it_is_about_and_nothing_else(tmp_path: Path) -> None:
    """`promtool test rules` on the cases above. The copy of the rules it reads has no annotations:
    promtool compares them verbatim, and their templates are checked by `check rules` above."""
    tool = promtool()
    stripped = []
    for path in RULES:
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(document))
        stripped.append(copy.name)
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in rules()}
    tests = []
    for name, input_series, firing in ALERT_CASES:
        assert set(firing) <= set(severity), name
        checks = [
            {
                "eval_time": "20m",
                "alertname": alert,
                "exp_alerts": [
                    {"exp_labels": {**labels, "severity": severity[alert]}}
                    for labels in firing.get(alert, [])
                ],
            }
            for alert in severity
        ]
        tests.append(
            {"name": name, "interval": "15s", "input_series": input_series, "alert_rule_test": checks}
        )
    fired = {alert for _, _, firing in ALERT_CASES for alert in firing}
    assert fired == set(severity), f"alerts no case fires: {sorted(set(severity) - fired)}"
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump({"rule_files": stripped, "evaluation_interval": "15s", "tests": tests})
    )
    result = subprocess.run(
        [tool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- The dashboard's structure --------------------------------------------------------------


def test_dashboard_panels_have_a_datasource_and_parsed_targets() -> None:
    assert DASHBOARDS, "no dashboards"
    for name, dashboard in dashboards().items():
        assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int), name
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert (
            variables["datasource"]["type"] == "datasource"
            and variables["datasource"]["query"] == "prometheus"
        )
        # The provisioned data source (deploy/grafana/provisioning) is the variable's default.
        provisioned = yaml.safe_load(
            (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
        )
        assert variables["datasource"]["current"]["value"] == provisioned["datasources"][0]["uid"]
        ids, titles = [], []
        for panel in panels(dashboard):
            ids.append(panel["id"])
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            titles.append(panel["title"])
            assert panel["type"] in {"timeseries", "stat"}, panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), panel["title"]
            targets = panel["targets"]
            assert targets, panel["title"]
            assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
            for target in targets:
                assert target["datasource"] == panel["datasource"], panel["title"]
                parse(target["expr"])  # raises on anything the reader does not understand
                # Every replica serves the same numbers: summing over instances would double them.
                assert not re.match(r"\s*sum\s*\(\s*etl_jobs", target["expr"]), target["expr"]
        assert len(ids) == len(set(ids)), name
        shown = {s.metric for _, query, _ in queries() for s in query.selectors}
        assert {
            "etl_jobs_waiting",
            "etl_jobs_oldest_waiting_seconds",
            "etl_jobs_time_to_start_seconds",
            "etl_jobs_failed_recent",
            "etl_jobs_running",
            "etl_jobs_retries_pending",
            "etl_jobs_retries_overdue",
            "etl_jobs_oldest_overdue_retry_seconds",
        } <= shown, name
