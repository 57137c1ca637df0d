"""Screenshots of the console (``/ui``) for the README: the drift demo's round (drift -> retrain -> shadow ->
canary -> promoted) on an embedded Ray cluster, then the front page, the model page and the new version's lineage,
in headless Chromium (Debian's ``chromium``, driven by Playwright: no browser download).

Usage: ``python examples/quickstart/console_screenshot.py [--out docs/img] [--port 8000]`` (``make screenshot``).
It works in a temporary copy of the quickstart, like ``make demo-drift``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _demo():
    spec = importlib.util.spec_from_file_location("demo_drift", HERE / "demo_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shoot(url: str, out: Path, model: str, version: int, token: str | None) -> list[Path]:
    """Sign in (when the deployment has a token) and write the three screenshots; return their paths."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    shots = [out / "console-home.png", out / "console-model.png", out / "console-version.png"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(f"{url}/ui")
        if token and page.url.endswith("/ui/login"):
            page.fill("#token", token)
            page.click("form[action$='/ui/login'] button")
        page.wait_for_selector("tr.model")
        page.screenshot(path=shots[0])
        page.goto(f"{url}/ui/models/{model}?feature=support_calls")
        page.locator("#drift svg.chart .mark").first.wait_for(state="attached")
        page.screenshot(path=shots[1], full_page=True)
        page.goto(f"{url}/ui/models/{model}/versions/{version}")
        page.screenshot(path=shots[2], full_page=True)
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshots of Loom's console after the drift demo's round.")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    import ray
    from rich.console import Console

    from runtime import load_project
    from runtime.serving import shutdown
    from runtime.serving.client import operator_token, serving_token, url_of

    demo = _demo()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="loom-console-"))
    root = demo.prepare(tmp / "quickstart", worse=False, port=args.port, name="churn-quickstart")
    try:
        result = demo.run_demo(root, worse=False, console=console, timeout_s=300)
        project = load_project(root)
        rows = demo.new_concept(demo.generator(root).generate(2000, seed=33, drift=1.0))
        traffic = demo.Traffic(url_of(project), rows, serving_token(project))
        traffic.start()  # live traffic on the promoted version while the pictures are taken
        time.sleep(15)
        shots = shoot(url_of(project), args.out, demo.MODEL, int(result["version"] or 1), operator_token(project))
        traffic.halt.set()
        traffic.join(30)
    finally:
        try:
            shutdown(load_project(root))
        except Exception as err:  # noqa: BLE001 - nothing served: nothing to stop
            console.print(f"[dim]shutdown: {err}[/]")
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for shot in shots:
        console.print(f"wrote {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
