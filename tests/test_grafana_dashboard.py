"""examples/grafana stays true to what Loom exports: the dashboard's JSON is sound (unique panel ids, every panel on
the ``${datasource}`` variable, every variable defined), every PromQL expression parses into metric names, label
matchers and ``by``/``on`` clauses, and against a RUNNING Loom (two models, one of them regression, a shadow,
tokens, served on the session Ray cluster and sent predictions, feedback and drift checks) every metric the
dashboard queries is exported under the names Prometheus stores, both through the ``loom`` scrape job of
examples/prometheus/prometheus.yml (Loom's ``/metrics`` with the operator token read from a file, renamed by the
job's relabelling) and through Ray's metrics export (the ``ray`` job), with every label the dashboard uses."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from conftest import make_project
from runtime import load_project
from runtime.artifacts import REFERENCE
from runtime.model import ModelBundle, Preprocessor, TabularMLP
from runtime.serving import deploy, shadow, shutdown
from runtime.serving.drift import DriftMetrics
from runtime.serving.metrics import ServingMetrics
from runtime.tasks import Regression
from serving_models import FEATURES, data, oip_inputs, records, register_version, registry

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "examples" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboard.json").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "examples" / "prometheus" / "prometheus.yml").read_text())
README = (GRAFANA / "README.md").read_text()
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Labels Prometheus itself puts on every scraped series (the dashboard filters on ``job``).
TARGET_LABELS = {"job", "instance"}
#: Grafana's own variables, and what they stand for when an expression is parsed.
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
#: PromQL's functions and aggregations the dashboard may call (a misspelt one is an error, not a metric).
FUNCTIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
             "rate", "irate", "increase", "delta", "idelta", "histogram_quantile", "clamp", "clamp_min",
             "clamp_max", "abs", "round", "ceil", "floor", "vector", "scalar", "absent", "sort", "sort_desc",
             "label_replace", "label_join", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
             "last_over_time", "changes", "resets", "deriv", "predict_linear", "time"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
            "inf", "nan"}
#: Functions whose argument must be a running total (a counter, or a histogram's cumulative parts).
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}

NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"


# -- the PromQL the dashboard holds ----------------------------------------------------------------------------------


@dataclass
class Query:
    """What one PromQL expression reads: metric names, each selector's label names, the labels of its ``by``,
    ``without``, ``on``, ``ignoring`` and ``group_*`` clauses, the functions it calls and the metrics passed to
    counter functions (``rate``, ``increase``, ...)."""

    expr: str
    metrics: set[str] = field(default_factory=set)
    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    clause_labels: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    counted: set[str] = field(default_factory=set)


def substitute(expr: str) -> str:
    """Grafana's variables replaced as Grafana would: its interval variables by durations, the dashboard's own by a
    value (they only ever stand in label values)."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return BUILTINS.get(name, "x")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def parse(expr: str) -> Query:
    q = Query(expr)
    e = substitute(expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', e)  # label values say nothing of names
    assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), f"unbalanced: {expr}"
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries: [5m], [1h:1m]

    def selector(m: re.Match) -> str:
        name, body = m.group(1), m.group(2)
        labels = set(re.findall(rf"({NAME})\s*(?:=~|!~|!=|=)", body))
        assert name and name.lower() not in KEYWORDS and "__name__" not in labels, \
            f"a selector needs a metric name: {expr}"
        q.selectors.append((name, labels))
        return f" {name} "

    e = re.sub(rf"({NAME})?\s*\{{([^{{}}]*)\}}", selector, e)

    def clause(m: re.Match) -> str:
        q.clause_labels |= {label.strip() for label in m.group(2).split(",") if label.strip()}
        return " "

    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", clause, e)
    for m in re.finditer(rf"\b(rate|irate|increase|resets)\s*\(\s*({NAME})", e):
        q.counted.add(m.group(2))
    for m in re.finditer(rf"(?<![\w.]){NAME}", e):
        token = m.group(0)
        if token.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]):
            q.functions.add(token)
        else:
            q.metrics.add(token)
    q.metrics |= {name for name, _ in q.selectors}
    return q


def label_values(query: str) -> tuple[Query, str]:
    """A ``label_values(selector, label)`` variable query: the selector parsed, and the label."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    assert m, f"not a label_values(metric, label) query: {query}"
    return parse(m.group(1)), m.group(2)


def panels() -> Iterator[dict[str, Any]]:
    for panel in DASHBOARD["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries() -> list[tuple[dict[str, Any], dict[str, Any], Query]]:
    """(panel, target, parsed expression) of every query the dashboard runs."""
    return [(p, t, parse(t["expr"])) for p in panels() for t in p.get("targets", [])]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


def variable_queries() -> list[tuple[str, Query, str]]:
    out = []
    for name, v in variables().items():
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((name, *label_values(query)))
    return out


def queried() -> dict[str, str]:
    """Every metric the dashboard reads, with where (a panel's title or a variable)."""
    out: dict[str, str] = {}
    for panel, _, q in queries():
        for name in q.metrics:
            out.setdefault(name, f"panel {panel['title']!r}")
    for var, q, _ in variable_queries():
        for name in q.metrics:
            out.setdefault(name, f"variable ${var}")
    return out


def test_the_parser_reads_names_labels_and_clauses():
    q = parse('histogram_quantile(0.99, sum by (model, le) (rate(ray_loom_request_seconds_bucket{job="$job", '
              'model=~"$model", code!~"5.."}[$__rate_interval])))')
    assert q.metrics == {"ray_loom_request_seconds_bucket"} and q.counted == q.metrics
    assert q.selectors == [("ray_loom_request_seconds_bucket", {"job", "model", "code"})]
    assert q.clause_labels == {"model", "le"} and q.functions == {"histogram_quantile", "sum", "rate"}
    q = parse('sum(rate(a_total[5m])) by (model) / on (model) group_left sum without (replica) (b) > bool 0.5 '
              'or vector(0) unless c offset 5m')
    assert q.metrics == {"a_total", "b", "c"} and q.counted == {"a_total"}
    assert q.clause_labels == {"model", "replica"} and "vector" in q.functions
    assert parse('max by (feature) (x{le="1e3", y="sum(rate(z[5m]))"})').metrics == {"x"}  # values are not names
    with pytest.raises(AssertionError, match="metric name"):
        parse('sum({__name__=~"loom_.*"})')
    with pytest.raises(AssertionError, match="unbalanced"):
        parse("sum(rate(x[5m])")


# -- the dashboard's JSON ---------------------------------------------------------------------------------------------


def test_dashboard_json_is_sound():
    assert DASHBOARD["schemaVersion"] >= 39 and DASHBOARD["uid"] and DASHBOARD["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    variables_ = variables()
    ds = variables_.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", ds
    assert {"model", "version"} <= set(variables_), set(variables_)
    for name in ("model", "version"):
        assert variables_[name]["type"] == "query" and variables_[name]["multi"] and variables_[name]["includeAll"]
    for name, v in variables_.items():
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE, (name, v["datasource"])
    assert queries(), "the dashboard queries nothing"
    for panel in panels():
        if panel["type"] == "row":
            assert not panel.get("targets"), f"row {panel['title']!r} has queries"
            continue
        assert panel["datasource"] == DATASOURCE, f"panel {panel['title']!r}: datasource {panel.get('datasource')}"
        assert panel.get("targets"), f"panel {panel['title']!r} queries nothing"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, (panel["title"], grid)
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), (panel["title"], refs)
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, (panel["title"], target.get("datasource"))
            assert target["expr"].strip(), panel["title"]
    # every variable an expression or a variable query uses is defined (or Grafana's own)
    used = {m.group(1) or m.group(2) for _, t, _ in queries()
            for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", t["expr"])}
    used |= {m.group(1) or m.group(2) for v in variables_.values() if v["type"] == "query"
             for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", json.dumps(v["query"]))}
    assert used - set(BUILTINS) <= set(variables_), used - set(BUILTINS) - set(variables_)
    for panel, target, q in queries():
        assert q.functions <= FUNCTIONS, f"panel {panel['title']!r}: unknown functions {q.functions - FUNCTIONS}"
        assert q.metrics, f"panel {panel['title']!r} reads no metric: {target['expr']}"
        for name, labels in q.selectors:  # each panel follows the variables
            assert "job" in labels, f"panel {panel['title']!r}: {name} ignores $job"
        if "histogram_quantile" in q.functions:
            assert "le" in q.clause_labels and all(m.endswith("_bucket") for m in q.metrics), target["expr"]
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        if q.clause_labels:  # an aggregation keeps only the labels it names
            assert legend <= q.clause_labels, f"panel {panel['title']!r}: legend {legend - q.clause_labels}"


def _registries() -> set[str]:
    """Every metric family Loom's code defines (a replica's metrics and the drift gauges)."""
    serving = ServingMetrics("r")
    DriftMetrics(serving.registry, "r")
    return {family.name for family in serving.registry.collect()}


def test_every_family_loom_exports_has_a_panel():
    shown = {re.sub(r"^ray_|_(total|bucket|sum|count)$", "", name) for name in queried()}
    missing = _registries() - shown
    assert not missing, f"Loom exports {sorted(missing)} but no panel of examples/grafana/dashboard.json shows it"


# -- the Prometheus and Grafana configuration ------------------------------------------------------------------------


def jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def relabel(name: str, rules: list[dict[str, Any]]) -> str | None:
    """What Prometheus stores a scraped sample's name as after the job's ``metric_relabel_configs`` (only
    ``__name__`` rules: drop, keep, replace); ``None`` when dropped."""
    for rule in rules:
        assert rule.get("source_labels") == ["__name__"], rule
        action = rule.get("action", "replace")
        m = re.fullmatch(rule.get("regex", "(.*)"), name)  # Prometheus anchors its regexes
        if action == "drop" and m:
            return None
        if action == "keep" and not m:
            return None
        if action == "replace" and m:
            assert rule["target_label"] == "__name__", rule
            name = re.sub(r"\$\{(\d+)\}|\$(\d+)", lambda g: m.group(int(g.group(1) or g.group(2))),
                          rule.get("replacement", "$1"))
        assert action in {"drop", "keep", "replace"}, rule
    return name


def test_prometheus_config_scrapes_loom_with_a_token_file():
    loom = jobs()["loom"]
    assert loom["metrics_path"] == "/metrics"
    assert loom.get("scheme", "http") in {"http", "https"} and loom["static_configs"][0]["targets"]
    auth = loom["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and auth["credentials_file"].startswith("/")
    secrets = {"credentials", "bearer_token", "password", "authorization_header"}
    inline = [(k, v) for k, v in _walk(PROMETHEUS) if k in secrets]
    assert not inline, f"a secret inline in examples/prometheus/prometheus.yml: {[k for k, _ in inline]}"
    # the job's relabelling gives Loom's own names the ones Ray's export has, which the dashboard reads
    rules = loom["metric_relabel_configs"]
    assert relabel("loom_requests_total", rules) == "ray_loom_requests_total"
    assert relabel("loom_request_seconds_bucket", rules) == "ray_loom_request_seconds_bucket"
    assert relabel("loom_requests_created", rules) is None
    assert all(name.startswith("ray_loom_") for name in queried())
    assert jobs()["ray"]["file_sd_configs"]  # the cluster-wide job stays (tests/test_metrics_export.py)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    (source,) = [yaml.safe_load(p.read_text()) for p in (GRAFANA / "provisioning" / "datasources").glob("*.yaml")]
    (ds,) = source["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http") and ds.get("isDefault")
    (provider,) = [yaml.safe_load(p.read_text()) for p in (GRAFANA / "provisioning" / "dashboards").glob("*.yaml")]
    (files,) = provider["providers"]
    assert files["type"] == "file"
    folder = files["options"]["path"]
    # the README's commands mount the dashboard where the provider reads, and the provisioning where Grafana does
    assert f"{folder}/dashboard.json" in README or f":{folder}" in README, folder
    assert "/etc/grafana/provisioning" in README and "examples/prometheus/prometheus.yml" in README
    scrape = ds["url"].rsplit(":", 1)[-1].strip("/")
    assert scrape in README, f"the README does not start Prometheus on the data source's port {scrape}"


# -- a running Loom --------------------------------------------------------------------------------------------------

CHURN, CHARGES = "churn-grafana", "charges-grafana"
TOKEN_ENV, TOKEN = "LOOM_GRAFANA_TOKEN", "grafana-inference"
OPERATOR_ENV, OPERATOR = "LOOM_GRAFANA_OPERATOR_TOKEN", "grafana-operator"
REG_FEATURES = [c for c in FEATURES if c != "total_charges"]


def register_regression(root: Path, name: str, *, seed: int = 3, steps: int = 150) -> int:
    """A small regression MLP (total charges from the other inputs), trained in-process and registered."""
    cfg = load_project(root).config
    df = data(root).dropna(subset=["total_charges"])
    schema = {c: cfg.data.columns[c] for c in REG_FEATURES}
    pre = Preprocessor.fit(df, schema)
    task = Regression.fit(df["total_charges"])
    x = torch.from_numpy(pre.transform(df))
    y = torch.from_numpy(task.targets(df["total_charges"]))
    torch.manual_seed(seed)
    kwargs = {"in_features": pre.n_features, "hidden": [8], "out_features": 1, "dropout": 0.0}
    model = TabularMLP(**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x).reshape(-1), y).backward()
        opt.step()
    bundle = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre, task=task,
                         inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                         label="total_charges", state_dict=model.state_dict())
    artifacts = bundle.to_artifacts()
    buf = io.BytesIO()
    df[REG_FEATURES].sample(500, random_state=seed).reset_index(drop=True).to_parquet(buf, index=False)
    artifacts[REFERENCE] = buf.getvalue()
    return registry(root).register(name, artifacts, params={"seed": seed}, alias="production").version


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory, serve_port) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)
        mp.setenv(OPERATOR_ENV, OPERATOR)
        mp.delenv("LOOM_TOKEN", raising=False)
        root = make_project(tmp_path_factory.mktemp("grafana") / "qs", port=serve_port,
                            serving={"route_prefix": "/grafana", "replica_cpus": 0.25,
                                     "auth_token_env": TOKEN_ENV, "operator_token_env": OPERATOR_ENV},
                            model={"name": CHURN},
                            monitoring={"interval_s": None, "flush_interval_s": 0.5})
        cfg = yaml.safe_load((root / "loom.yaml").read_text())
        cfg["name"] = "grafana-test"
        (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        register_version(root, seed=1, alias="production")
        register_version(root, seed=2, hidden=(8,), alias=None)  # the shadow
        register_regression(root, CHARGES)
        yield root


@pytest.fixture(scope="module")
def served(ray_cluster, project_dir) -> Iterator[str]:
    project = load_project(project_dir)
    deploy(project, CHURN, 1)
    deploy(project, CHARGES, 1)
    url = shadow(project, CHURN, 2)
    yield url
    shutdown(project)


def _until(what: str, probe, timeout: float = 90, every: float = 1.0):
    """``probe()`` until its first item is true; its second otherwise, in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        ok, detail = probe()
        if ok:
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {str(detail)[:2000]}")
        time.sleep(every)


@dataclass
class Scrape:
    """Samples of one scrape by the name Prometheus stores them under: their label names, values, and the type of
    the family each name belongs to."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str], value: float, kind: str) -> None:
        self.labels.setdefault(name, set()).update(labels)
        self.values.setdefault(name, []).append(value)
        self.types[name] = kind


def scrape_loom(text: str, rules: list[dict[str, Any]], mine) -> Scrape:
    """Loom's ``/metrics`` text as the ``loom`` job stores it (its relabelling applied)."""
    out = Scrape()
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(types) == len(set(types)), f"Prometheus refuses a scrape with a family twice: {types}"
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            stored = relabel(s.name, rules)
            if stored is not None and mine(s.labels):
                out.add(stored, s.labels, s.value, family.type)
    return out


def scrape_ray(mine) -> Scrape:
    """Every live node's Ray metrics export (the ``ray`` job's targets), Loom's series of this deployment."""
    out = Scrape()
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        text = httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("ray_loom_") and mine(s.labels):
                    out.add(s.name, s.labels, s.value, family.type)
    return out


def check_dashboard_against(scrape: Scrape, where: str, names: dict[str, str] | None = None, *,
                            typed: bool = True) -> None:
    """Every metric the dashboard reads (``names``: those, with where they are read) is in ``scrape``, every label
    the dashboard selects or aggregates by is one the metric has, and ``rate()``/``increase()`` read running
    totals only. ``typed``: the scrape's family types are Loom's own (Ray's export has a histogram's parts as
    gauges, so there only the names' suffixes tell)."""
    names = queried() if names is None else names
    missing = {name: at for name, at in names.items() if name not in scrape.labels}
    assert not missing, "\n".join(f"the dashboard queries {name} ({at}), which {where} does not export"
                                  for name, at in sorted(missing.items()))
    checked = [(f"panel {p['title']!r}", q) for p, _, q in queries()]
    checked += [(f"variable ${var}", q) for var, q, _ in variable_queries()]
    for var, q, label in variable_queries():
        for name in q.metrics:
            assert label in scrape.labels[name] | TARGET_LABELS, f"variable ${var}: {name} has no label {label!r}"
    for at, q in checked:
        if not q.metrics <= set(scrape.labels):
            continue  # left out of this scrape on purpose (names)
        for name, labels in q.selectors:
            unknown = labels - scrape.labels[name] - TARGET_LABELS
            assert not unknown, \
                f"{at}: {name} has no label {sorted(unknown)} in {where} ({sorted(scrape.labels[name])})"
        for name in q.metrics:
            unknown = q.clause_labels - scrape.labels[name] - TARGET_LABELS
            assert not unknown, f"{at}: by/on {sorted(unknown)}, which {name} does not have in {where}"
        for name in q.counted:
            kind = scrape.types[name]
            running = kind in {"counter", "histogram"} if typed else re.search(r"_(total|bucket|sum|count)$", name)
            assert running, f"{at}: rate/increase of {name} ({kind}), which is not a running total"
    if typed:  # a counter's total and a histogram's parts are what their names say
        for name in names:
            kind = scrape.types[name]
            expected = ("counter" if name.endswith("_total") else
                        "histogram" if re.search(r"_(bucket|sum|count)$", name) else "gauge")
            assert kind == expected, f"{name} ({names[name]}) is a {kind} in {where}, not a {expected}"


@pytest.mark.slow
def test_every_queried_metric_is_exported_by_a_running_loom(served, project_dir, tmp_path):
    frame = data(project_dir)
    infer = {"Authorization": f"Bearer {TOKEN}"}
    # what Prometheus does: the token from the job's credentials file, here a file of its own
    token_file = tmp_path / "loom_operator_token"
    token_file.write_text(OPERATOR)
    token_file.chmod(0o600)
    operator = {"Authorization": f"Bearer {token_file.read_text()}"}
    with httpx.Client(base_url=served, timeout=60) as client:
        assert client.get("/metrics").status_code == 401  # /metrics is the operator's: the job needs the token
        assert client.get("/metrics", headers=infer).status_code == 403
        ids: dict[str, list[tuple[str, int]]] = {CHURN: [], CHARGES: []}
        for i in range(0, 300, 10):  # predictions on both models and two protocols, and bad requests (4xx)
            rows = frame.iloc[i:i + 10]
            r = client.post(f"/predict/{CHURN}", json=records(rows), headers=infer)
            assert r.status_code == 200, r.text
            ids[CHURN].append((r.headers["x-loom-request-id"], i))
            r = client.post(f"/predict/{CHARGES}", json=json.loads(rows[REG_FEATURES].to_json(orient="records")),
                            headers=infer)
            assert r.status_code == 200, r.text
            ids[CHARGES].append((r.headers["x-loom-request-id"], i))
            r = client.post(f"/v2/models/{CHURN}/infer", json={"inputs": oip_inputs(rows)}, headers=infer)
            assert r.status_code == 200, r.text
        bad = client.post(f"/predict/{CHURN}", json=[{**records(frame.iloc[:1])[0], "contract": "no-such"}],
                          headers=infer)
        assert 400 <= bad.status_code < 500, bad.text
        # ground truth for both, then a check of each (performance on the labelled rows)
        labels = {CHURN: lambda i: [bool(v) for v in frame["churned"].iloc[i:i + 10]],
                  CHARGES: lambda i: [float(v) for v in frame["total_charges"].iloc[i:i + 10]]}
        for model in (CHURN, CHARGES):
            body = {"labels": [{"id": rid, "label": labels[model](i)} for rid, i in ids[model]
                               if not np.isnan(frame["total_charges"].iloc[i:i + 10]).any()]}
            r = client.post(f"/feedback/{model}", json=body, headers=operator)
            assert r.status_code == 200 and r.json()["accepted"] > 0, r.text

        def checked(model: str):
            def probe():
                r = client.get(f"/monitoring/{model}/drift", headers=operator)
                body = r.json() if r.status_code == 200 else {}
                return bool(body.get("performance")), body or r.text[:500]
            return probe

        reports = {m: _until(f"a drift check of {m} with labelled rows", checked(m)) for m in (CHURN, CHARGES)}
        assert "accuracy" in reports[CHURN]["performance"] and "rmse" in reports[CHARGES]["performance"], reports

        def mine(labels: dict[str, str]) -> bool:  # this deployment's series (capture counters have no model)
            return labels.get("model", CHURN) in {CHURN, CHARGES}

        rules = jobs()["loom"]["metric_relabel_configs"]

        def loom_scrape():
            r = client.get("/metrics", headers=operator)
            assert r.status_code == 200, r.text[:300]
            s = scrape_loom(r.text, rules, mine)
            # the shadow scores after the answer, and the monitor's gauges are fetched every few seconds
            ready = {"ray_loom_shadow_agree_rows_total", "ray_loom_window_rmse", "ray_loom_window_accuracy"}
            return ready <= set(s.labels), (sorted(ready - set(s.labels)), s)

        _, scraped = _until("the shadow's counts and the monitor's gauges on /metrics", loom_scrape, timeout=60)
    check_dashboard_against(scraped, "Loom's /metrics (the loom job)")

    # Ray's export: what the ray job scrapes, every replica and the monitor (counters once they counted something)
    exported = {name: at for name, at in queried().items()
                if scraped.types[name] != "counter" or any(v > 0 for v in scraped.values[name])}
    zero = set(queried()) - set(exported)
    assert zero <= {"ray_loom_shadow_errors_total", "ray_loom_shadow_skipped_total",
                    "ray_loom_capture_dropped_total"}, zero  # nothing else may be left at zero by the traffic

    def ray_scrape():
        s = scrape_ray(mine)
        return set(exported) <= set(s.labels), (sorted(set(exported) - set(s.labels)), s)

    _, ray_scraped = _until("the dashboard's metrics in Ray's metrics export (missing)", ray_scrape, timeout=120,
                            every=3)
    check_dashboard_against(ray_scraped, "Ray's metrics export (the ray job)", exported, typed=False)
