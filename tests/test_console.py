"""The web console (/ui) over real HTTP (uvicorn), without Ray: sign-in and its cookie, every page after real
traffic and drift checks, 404 pages, secrets kept out of pages, and `loom status` showing the front page's
summary. The browser tests (tests/test_console_browser.py) drive it in Chromium on Ray Serve."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner
from serving_models import FEATURES, data, records, register_version, registry
from test_serving_protocols import ThreadedServer, _free_port

from conftest import make_project
from runtime.cli import cli
from runtime.serving.app import LoomApp
from runtime.serving.console import COOKIE, charts, session_value
from runtime.serving.drift import histogram
from runtime.serving.routing import RoutingTable
from runtime.serving.server import ModelServer

OPERATOR = "operator-token-for-the-console-7f3a"
INFERENCE = "inference-token-for-the-console-19bc"
PASSWORD = "pg-pass-never-shown-42"
HISTORY = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "val_accuracy": 0.6 + e / 50}
           for e in range(6)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("console") / "qs", port=_free_port(),
                        monitoring={"window": 2000, "flush_interval_s": 0.2, "interval_s": None, "min_rows": 50})
    register_version(root, seed=1)
    reg = registry(root)
    v1 = reg.get_version("churn", 1)
    artifacts = {a: reg.read_artifact("churn", 1, a) for a in v1.artifacts}
    lineage = {"data": {"source": f"postgresql://loom:{PASSWORD}@db.internal:5432/churn", "rows": 5000,
                        "fingerprint": "ab" * 32},
               "features": {"store": "local", "view": "churn_features", "features": ["tenure_months"]},
               "training": {"history": HISTORY, "train_rows": 4000, "seconds": 3.5, "params": {"epochs": 6}},
               "code": {"git_commit": "0123456789abcdef", "project": "churn-quickstart"}, "key": "cd" * 32}
    reg.register("churn", artifacts, params={"epochs": 6, "api_token": "tok-secret-param-99"},
                 metrics={"val_accuracy": 0.71}, lineage=lineage, tags={"loom.loop": "rolled-back",
                                                                         "loom.judge.reason": "no better"})
    server = ModelServer.from_project(str(root), token=INFERENCE, operator_token=OPERATOR)
    server.apply(RoutingTable().deploy("churn", 1).deploy("churn", 2, canary=25))
    with ThreadedServer(LoomApp(server)) as base:
        op = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {OPERATOR}"})
        df = data(root)
        for i in range(30):
            rows = df.sample(20, random_state=i)
            if i >= 15:
                rows = rows.assign(monthly_charges=rows["monthly_charges"] * 2.0)
            assert op.post("/predict/churn", json=records(rows)).status_code == 200
        time.sleep(0.5)  # the capture flush
        for _ in range(2):
            assert op.get("/monitoring/churn/drift").status_code == 200
        yield base, server, root
        op.close()


@contextlib.contextmanager
def signed_in(base: str) -> Iterator[httpx.Client]:
    """A client holding the console's session cookie, as the sign-in form leaves a browser."""
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/ui/login", data={"token": OPERATOR})
        assert r.status_code == 303, r.text
        yield client


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def text_of(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


def drawn_marks(svg_html: str) -> int:
    return len(re.findall(r'class="mark"', svg_html))


# -- sign-in ------------------------------------------------------------------------------------------------


def test_pages_redirect_to_the_sign_in_form_and_the_api_answers_401(served):
    base, _, _ = served
    with httpx.Client(base_url=base, timeout=30) as anon:
        r = anon.get("/ui/models/churn")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        form = anon.get("/ui/login")
        assert form.status_code == 200 and 'type="password"' in form.text and 'name="token"' in form.text
        r = anon.get("/ui/api/summary")
        assert r.status_code == 401 and "error" in r.json()
        # the inference token is not the operator's
        r = anon.get("/ui", headers={"Authorization": f"Bearer {INFERENCE}"})
        assert r.status_code == 303
        assert anon.get("/ui/static/console.js").status_code == 200  # no data in it, no token needed


def test_sign_in_sets_an_httponly_cookie_that_is_not_the_token(served):
    base, _, _ = served
    with httpx.Client(base_url=base, timeout=30) as c:
        wrong = c.post("/ui/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "not this deployment" in text_of(wrong.text)
        r = c.post("/ui/login", data={"token": OPERATOR})
        assert r.status_code == 303 and r.headers["location"] == "/ui"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/ui" in cookie
        assert OPERATOR not in cookie and session_value(OPERATOR) in cookie
        page = c.get("/ui")
        assert page.status_code == 200 and "churn" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        out = c.post("/ui/logout", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert out.status_code == 303 and 'Max-Age=0' in out.headers["set-cookie"]
        assert c.get("/ui").status_code == 303


def test_a_forged_or_cross_site_sign_in_is_refused(served):
    base, _, _ = served
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/ui/login", data={"token": OPERATOR}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        r = c.get("/ui", headers={"Cookie": f"{COOKIE}={session_value('another token')}"})
        assert r.status_code == 303
        r = c.post("/ui/login", content=b"token=x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415


# -- pages --------------------------------------------------------------------------------------------------


def test_front_page_shows_each_model_with_production_traffic_and_drift(served):
    base, _, _ = served
    with signed_in(base) as c:
        text = text_of(c.get("/ui").text)
        assert "churn" in text and "v1" in text and "v1 75%" in text and "v2 25%" in text
        summary = c.get("/ui/api/summary").json()
    [m] = summary["models"]
    assert m["name"] == "churn" and m["production"] == 1 and m["versions"] == 2
    assert m["routes"]["traffic"] == {"1": 75, "2": 25}
    assert m["traffic"]["requests"] == 30 and m["traffic"]["rps"] > 0
    assert m["drift"]["drifted"] in (True, False) and m["drift"]["at"]


def test_model_page_draws_traffic_drift_over_time_and_histograms(served):
    base, _, _ = served
    with signed_in(base) as c:
        page = c.get("/ui/models/churn?feature=monthly_charges")
        assert page.status_code == 200
        html = page.text
    live = html[html.index('id="live"'):html.index('id="drift"')]
    drift = html[html.index('id="drift"'):html.index('id="feedback"')]
    assert drawn_marks(drift) >= len(FEATURES)  # one line (or dot) per input's score, plus the histogram's bars
    assert 'data-series="monthly_charges"' in drift and "reference (training)" in drift
    assert drawn_marks(live) >= 1 and 'data-version="2" data-weight="25"' in live
    assert "rolled-back" in text_of(html) and "no better" in text_of(html)  # the loop's round, from its tags


def test_live_fragment_and_histogram_fragment(served):
    base, _, _ = served
    with signed_in(base) as c:
        live = c.get("/ui/models/churn/live")
        assert live.status_code == 200 and "<html" not in live.text and 'data-rps="' in live.text
        hist = c.get("/ui/models/churn/histogram", params={"feature": "contract"})
        assert hist.status_code == 200 and drawn_marks(hist.text) >= 2
        unknown = c.get("/ui/models/churn/histogram", params={"feature": "no_such_input"})
        assert unknown.status_code == 200 and "no input 'no_such_input'" in text_of(unknown.text)


def test_version_page_shows_lineage_and_training_history(served):
    base, _, _ = served
    with signed_in(base) as c:
        html = c.get("/ui/models/churn/versions/2").text
    text = text_of(html)
    assert "churn_features" in text and "0123456789abcdef" in text and "5,000 rows" in text
    assert "loss per epoch" in html and drawn_marks(html) >= 3  # losses together, then accuracy
    assert 'data-series="val_loss"' in html and 'data-series="val_accuracy"' in html


def test_unknown_models_and_versions_get_a_404_page(served):
    base, _, _ = served
    with signed_in(base) as c:
        for path in ("/ui/models/nope", "/ui/models/nope/live", "/ui/models/churn/versions/99",
                     "/ui/models/churn/versions/abc", "/ui/models/nope/histogram?feature=x",
                     "/ui/models/%2e%2e/versions/1"):
            r = c.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("text/html"), path
            assert "Not served here" in r.text and "Traceback" not in r.text, path


def test_pages_never_show_a_secret(served):
    base, _, _ = served
    with signed_in(base) as c:
        pages = [c.get(p).text for p in ("/ui", "/ui/models/churn", "/ui/models/churn/versions/2",
                                         "/ui/models/churn/live", "/ui/api/summary", "/ui/login")]
    for html in pages:
        assert PASSWORD not in html and OPERATOR not in html and INFERENCE not in html
        assert "tok-secret-param-99" not in html
    assert "postgresql://loom:***@db.internal" in text_of(pages[2]) or "db.internal" in pages[2]


def test_loom_status_prints_the_front_page_summary(served, monkeypatch):
    base, _, _ = served
    monkeypatch.setenv("LOOM_TOKEN", OPERATOR)
    result = CliRunner().invoke(cli, ["status", "--url", base], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "churn" in result.output and "v1 75%" in result.output and "v2 25%" in result.output
    as_json = CliRunner().invoke(cli, ["status", "--url", base, "--json"], catch_exceptions=False)
    assert '"production": 1' in as_json.output
    monkeypatch.setenv("LOOM_TOKEN", "wrong")
    refused = CliRunner().invoke(cli, ["status", "--url", base])
    assert refused.exit_code == 1 and "token" in refused.output and "Traceback" not in refused.output


# -- the parts ----------------------------------------------------------------------------------------------


def test_charts_escape_names_and_say_when_empty():
    svg = charts.line_chart({"<script>x</script>": [(0, 1), (1, 2)]}, title="t & <b>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and drawn_marks(svg) == 1
    empty = charts.line_chart({"a": []}, title="t", empty="nothing yet")
    assert "nothing yet" in empty and drawn_marks(empty) == 0
    bars = charts.bar_chart(["a", "b"], {"ref": [0.5, 0.5], "cur": [1.0, 0.0]}, title="h")
    assert drawn_marks(bars) == 3  # a zero-height bar is not a mark


def test_histogram_shares_cover_every_value():
    ref = pd.Series([1.0, 2.0, 3.0, 4.0, None])
    cur = pd.Series([0.0, 2.5, 10.0, float("nan")])  # below and above the reference's range: the end bins
    out = histogram(ref, cur, categorical=False)
    assert out["kind"] == "numeric" and len(out["edges"]) == len(out["reference"]) + 1
    assert sum(out["reference"]) == pytest.approx(1) and sum(out["current"]) == pytest.approx(1)
    assert out["current"][0] == pytest.approx(1 / 3) and out["current"][-1] == pytest.approx(1 / 3)
    cats = histogram(pd.Series(["a"] * 5 + [f"r{i}" for i in range(30)]), pd.Series(["a", None]),
                     categorical=True)
    assert cats["categories"][0] == "a" and cats["categories"][-1] == "(other)"
    assert "(missing)" in cats["categories"] or cats["current"][-1] > 0
    assert sum(cats["reference"]) == pytest.approx(1) and sum(cats["current"]) == pytest.approx(1)
