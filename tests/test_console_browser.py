"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright, against a quickstart
served on Ray Serve by `loom up`, with traffic. It signs in through the form, finds the model, its production
version, a non-zero request rate and a drawn drift chart, then follows a `loom canary` change on its own."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from conftest import make_project
from runtime import load_project
from runtime.cli import cli
from runtime.serving import ServingClient, shutdown
from serving_models import data, records, register_version

pytestmark = pytest.mark.slow

TOKEN_ENV = "LOOM_CONSOLE_TEST_OPERATOR_TOKEN"
TOKEN = "console-browser-operator-token-5e1d"
#: Under CI (.ci/run installs Debian's chromium) a missing browser is a failure, never a skip.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


def loom(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def served(ray_cluster, serve_port, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    os.environ[TOKEN_ENV] = TOKEN
    root = make_project(tmp_path_factory.mktemp("console-browser") / "qs", port=serve_port,
                        training={"epochs": 3},
                        serving={"route_prefix": "/consoleui", "operator_token_env": TOKEN_ENV},
                        monitoring={"interval_s": 2, "min_rows": 50, "flush_interval_s": 0.5})
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "console-browser-test"
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    url = loom("up", str(root), "--detach").strip().splitlines()[-1]
    assert url.endswith("/consoleui"), url
    v2 = register_version(root, seed=7, alias=None)
    loom("deploy", str(root), "--version", str(v2), "--canary", "10", "--detach")
    try:
        yield url, root
    finally:
        shutdown(load_project(root))
        os.environ.pop(TOKEN_ENV, None)


class Traffic(threading.Thread):
    """Requests back to back until stopped, half of them drifted (so the drift chart has something to draw)."""

    def __init__(self, url: str, root: Path):
        super().__init__(daemon=True)
        df = data(root)
        self.bodies = [records(df.sample(10, random_state=i).assign(
            monthly_charges=lambda f, i=i: f["monthly_charges"] * (2.0 if i % 2 else 1.0))) for i in range(20)]
        self.client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
        self.stop = threading.Event()
        self.sent = 0
        self.failed: list[tuple[float, int, str]] = []
        self.began = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            r = self.client.post("/predict/churn", json=self.bodies[self.sent % len(self.bodies)])
            if r.status_code != 200:
                self.failed.append((round(time.monotonic() - self.began, 1), r.status_code, r.text[:120]))
            self.sent += 1
            time.sleep(0.02)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_console_shows_the_served_quickstart_and_follows_a_canary_change(served, browser):
    url, root = served
    traffic = Traffic(url, root)
    traffic.start()
    try:
        deadline = time.monotonic() + 60
        while traffic.sent < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        client = ServingClient(url, TOKEN)
        client.drift("churn")  # one check now; the schedule adds more every 2 s
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

        page.goto(f"{url}/ui")
        assert page.url.endswith("/consoleui/ui/login")  # refused pages go to the sign-in form
        page.fill("#token", TOKEN)
        page.click("form[action$='/ui/login'] button")
        page.wait_for_selector("tr.model[data-model='churn']")
        row = page.locator("tr.model[data-model='churn']")
        assert row.locator("td.production").inner_text().strip() == "v1"
        assert float(row.locator("td.rps").get_attribute("data-rps")) > 0
        assert TOKEN not in page.content()

        page.click("tr.model[data-model='churn'] a")
        page.wait_for_selector("#live [data-version='2'][data-weight='10']")
        # drawn, though two checks in the same second make a line of zero width, which Playwright calls hidden
        # (and the page's CSP forbids the evaluated scripts of wait_for_function)
        page.locator("#drift svg.chart .mark").first.wait_for(state="attached")
        assert page.locator("#drift svg.chart").first.get_attribute("aria-label") == "drift score per input"
        assert float(page.locator("#live tr[data-version='1'] td.rps").get_attribute("data-rps")) > 0

        print(f"canary change at {time.monotonic() - traffic.began:.1f} s")
        loom("canary", str(root), "40")
        # the page's own script refreshes the live section: no reload
        page.wait_for_selector("#live [data-version='2'][data-weight='40']", timeout=30_000)
        page.wait_for_selector("#live [data-version='1'][data-weight='60']")
        assert page.url.endswith("/consoleui/ui/models/churn")

        page.select_option("#feature", "contract")
        page.locator("#histogram p.note", has_text="contract:").wait_for()
        assert page.locator("#histogram svg.chart .mark").count() > 0
        assert not errors, errors  # no script error, no refused resource (the CSP would report it here)
        assert not traffic.failed, (traffic.sent, traffic.failed[:5])
    finally:
        traffic.stop.set()
        traffic.join(30)
