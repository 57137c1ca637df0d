"""Watch the retrain loop close itself: serve the quickstart model, send it drifted traffic with labels, and see the
controller inside the cluster notice the drift, retrain, shadow, canary and judge a new version, live.

The demo copies this example (``loom.yaml`` and ``generate_data.py``) into a temporary directory, so your own
quickstart state (``.loom/``, ``data/``) is never touched. There it writes the quickstart's data and a fresh, drifted
data set whose outcome follows a new concept (a customer with 3 or more support calls churns), turns the retrain
loop on (``monitoring.retrain``, short intervals so one round takes minutes), runs ``loom up`` and sends drifted,
labelled traffic. The served model no longer knows the concept, the retrained one does: it is promoted.

With ``--worse`` the fresh data's labels are shuffled and captured traffic is left out of the retrain, so the
candidate is worse than production and must be rolled back: production keeps serving the version it had.

Usage: ``python examples/quickstart/demo_drift.py [--worse] [--port 8000] [--keep]`` (``make demo-drift``,
``make demo-drift ARGS=--worse``). ``--keep`` keeps the temporary project directory (its registry, captured
traffic, the loop's state) for ``loom models list -p DIR`` and friends. Exit status 0 when the round ends as
expected (promoted; rolled back with ``--worse``), else 1.
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import importlib.util
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
MODEL = "churn"
FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]
#: Rows per request the traffic sends (each request gets its labels right after its answer).
BATCH = 20


def new_concept(frame: pd.DataFrame) -> pd.DataFrame:
    """Drifted customers whose outcome now follows support calls alone: the served model never learnt it."""
    return frame.assign(churned=frame["support_calls"] >= 3)


def generator(root: Path):
    """``generate(rows, seed, drift)`` of the project's ``generate_data.py``."""
    spec = importlib.util.spec_from_file_location("loom_demo_generate_data", root / "generate_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the project -----------------------------------------------------------------------------------------------

def prepare(dest: Path, *, worse: bool, port: int, name: str | None = None, route_prefix: str | None = None) -> Path:
    """Copy the quickstart into ``dest`` (without its ``.loom/`` or ``data/``), write its data and the drifted
    ``data/fresh.csv``, and set the retrain loop up in its ``loom.yaml``; return ``dest``."""
    dest = Path(dest)
    shutil.copytree(HERE, dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("data", ".loom", "__pycache__", Path(__file__).name))
    gen = generator(dest)
    gen.write(dest / "data" / "customers.csv")  # what data.generate would make: the quickstart's seed-0 data
    fresh = new_concept(gen.generate(4000, seed=11, drift=1.0))
    if worse:  # labels that follow nothing: whatever learns them is worse than production
        fresh = fresh.assign(churned=np.random.default_rng(7).permutation(fresh["churned"].to_numpy()))
    fresh.to_csv(dest / "data" / "fresh.csv", index=False, lineterminator="\n")

    cfg = yaml.safe_load((dest / "loom.yaml").read_text())
    cfg["name"] = name or ("churn-demo-drift-worse" if worse else "churn-demo-drift")
    cfg.setdefault("serving", {})["port"] = port
    if route_prefix:
        cfg["serving"]["route_prefix"] = route_prefix
    cfg.setdefault("training", {}).update(workers=1, epochs=3)
    cfg.setdefault("monitoring", {}).update(window=300, interval_s=2, min_rows=100, flush_interval_s=0.5)
    cfg["monitoring"]["retrain"] = {
        "enabled": True, "source": "csv://data/fresh.csv", "canary_percent": 50, "min_labelled": 200,
        "shadow_requests": 50, "cooldown_s": 0, "workers": 1, "check_interval_s": 1,
        **({"captured": False} if worse else {})}
    (dest / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


# -- traffic ---------------------------------------------------------------------------------------------------

class Traffic(threading.Thread):
    """Drifted requests and, right after each answer, its labels, as fast as one client sends them; counts every
    request and every failure (a non-200 answer or a broken connection). Standard library only."""

    def __init__(self, url: str, frame: pd.DataFrame, token: str | None = None):
        super().__init__(daemon=True, name="demo-traffic")
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path.rstrip("/")
        self.headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
        self.frame = frame.reset_index(drop=True)
        self.sent = 0
        self.labelled = 0
        self.failed: list[Any] = []
        self.halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self.last_body = b""
        #: The loop's phase, as the live view last read it: each failure notes it.
        self.phase = "serving"
        self.began = time.monotonic()

    def _post(self, path: str, body: str) -> tuple[int, dict[str, str]]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            self._conn.request("POST", self.prefix + path, body=body.encode(), headers=self.headers)
            response = self._conn.getresponse()
            self.last_body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            raise

    def _fail(self, what: str, status: Any, body: bytes) -> None:
        self.failed.append({"what": what, "status": status, "body": body[:160].decode("utf-8", "replace"),
                            "at_s": round(time.monotonic() - self.began, 1), "phase": self.phase})

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            start = i % len(self.frame)
            part = self.frame.iloc[start:start + BATCH]
            i += BATCH
            try:
                status, headers = self._post(f"/predict/{MODEL}", part[FEATURES].to_json(orient="records"))
                self.sent += 1
                if status != 200:
                    self._fail("predict", status, self.last_body)
                    continue
                labels = {"labels": [{"id": headers["x-loom-request-id"], "label": part["churned"].tolist()}]}
                status, _ = self._post(f"/feedback/{MODEL}", json.dumps(labels))
                if status != 200:
                    self._fail("feedback", status, self.last_body)
                else:
                    self.labelled += len(part)
            except (OSError, http.client.HTTPException, KeyError) as err:
                self._fail("error", type(err).__name__, str(err).encode())
            finally:
                time.sleep(0.05)


# -- the live view ---------------------------------------------------------------------------------------------

class Watch:
    """What the live table shows, read from the served application and the loop's state; remembers when drift
    was first detected."""

    def __init__(self, client: Any, loop: Any, traffic: Traffic, started: float):
        self.client, self.loop, self.traffic, self.started = client, loop, traffic, started
        self.state: dict[str, Any] = {}
        self.routes: dict[str, Any] = {}
        self.flow: dict[str, Any] = {}
        self.check: dict[str, Any] | None = None
        self.agreement: float | None = None
        self.drift_at: float | None = None  # epoch seconds of the first drifted check (its `at`)
        self.drift_seen: float | None = None  # time.monotonic() when the demo first saw it
        self.error: str | None = None
        self.controller: dict[str, Any] = {}

    def poll(self) -> None:
        from runtime.errors import LoomError

        self.state = self.loop.state()
        self.traffic.phase = self.state.get("phase") or "idle"
        self.controller = controller_status(self.loop.project)
        try:
            self.routes = self.client.routes().get("models", {}).get(MODEL, {})
            self.flow = self.client.traffic(MODEL, window_s=10)
            shadow = self.flow.get("shadow") or {}
            if shadow.get("agreement") is not None:
                self.agreement = float(shadow["agreement"])
            history = self.client.history(MODEL, limit=None if self.drift_at is None else 1)
            if history:
                self.check = history[-1]
            if self.drift_at is None:
                for check in history:
                    at = calendar.timegm(time.strptime(check["at"], "%Y-%m-%dT%H:%M:%SZ"))
                    if check.get("drifted") and at >= int(self.started):
                        self.drift_at, self.drift_seen = float(at), time.monotonic()
                        break
            self.error = None
        except LoomError as err:  # a route being redeployed, say: shown, and the next poll tries again
            self.error = str(err)
        if self.agreement is None and (self.state.get("shadow") or {}).get("agreement") is not None:
            self.agreement = float(self.state["shadow"]["agreement"])

    def table(self) -> Any:
        from rich.table import Table

        state, routes = self.state, self.routes
        t = Table(title="Loom: the retrain loop, live", show_header=False, min_width=60)
        t.add_column(style="bold")
        t.add_column()
        t.add_row("elapsed", f"{time.time() - self.started:6.1f} s")
        phase = state.get("phase") or "idle"
        if phase == "idle" and state.get("outcome"):
            phase = f"idle (last round: {state['outcome']})"
        t.add_row("loop phase", phase)
        t.add_row("candidate", f"v{state['version']}" if state.get("version") and state.get("phase") != "idle"
                  else "-")
        route = f"primary v{routes['primary']}" if routes.get("primary") is not None else "-"
        if routes.get("shadow") is not None:
            route += f" / shadow v{routes['shadow']}"
        if routes.get("canary") is not None:
            route += f" / canary v{routes['canary']} ({routes.get('canary_percent')}%)"
        t.add_row("routes", route)
        for version, v in (self.flow.get("versions") or {}).items():
            p99 = "-" if v.get("p99_ms") is None else f"{v['p99_ms']:.1f} ms"
            t.add_row(f"v{version} (10 s)", f"{v.get('rps', 0):6.1f} req/s  p99 {p99}  errors {v.get('errors', 0)}")
        t.add_row("shadow agreement", "-" if self.agreement is None else f"{self.agreement:.1%}")
        t.add_row("labelled rows sent", f"{self.traffic.labelled:,}  ({self.traffic.sent:,} requests)")
        if self.check:
            mark = "[red]drifted[/]" if self.check.get("drifted") else "[green]no drift[/]"
            t.add_row("last drift check", f"{mark}, share {float(self.check.get('share_drifted') or 0):.0%} "
                      f"(v{self.check.get('version')}, {self.check.get('at')})")
        else:
            t.add_row("last drift check", "none yet")
        if self.drift_at is not None:
            t.add_row("drift detected", f"{self.drift_at - self.started:6.1f} s after the start")
        ctl = self.controller
        if ctl.get("error"):
            t.add_row("controller", f"[red]{str(ctl['error'])[:100]}[/]")
        elif ctl:
            t.add_row("controller", f"{'alive' if ctl.get('alive') else '[red]stopped[/]'}, step {ctl.get('steps')}"
                      f"{', ' + ctl['busy'] if ctl.get('busy') else ''}")
        failed = len(self.traffic.failed)
        t.add_row("failed requests", f"[red]{failed}[/]" if failed else "0")
        if self.error:
            t.add_row("note", f"[yellow]{self.error[:100]}[/]")
        return t


def start_loop(project: Any) -> None:
    """Start the loop's controller beside the deployment, as ``loom up`` does after serving (idempotent)."""
    try:
        from runtime.loop_controller import start_if_enabled
    except ImportError:  # an older runtime: Pipeline.up started it
        return
    start_if_enabled(project)


def controller_status(project: Any) -> dict[str, Any]:
    """The loop controller's own status (its steps, what it is busy with, its last error), or ``{}``."""
    import ray

    try:
        from runtime.serving import find_controller
    except ImportError:  # an older runtime
        from runtime.serving.controller import controller as find_controller

    handle = find_controller(project)
    if handle is None:
        return {"error": "no controller runs"}
    try:
        status = ray.get(handle.status.remote(), timeout=5)
    except Exception as err:  # noqa: BLE001 - a controller being restarted: shown, asked again next poll
        return {"error": f"{type(err).__name__}: {err}"}
    return {k: v for k, v in status.items() if k != "state"}


def verdict_table(state: dict[str, Any]) -> Any:
    from rich.table import Table

    verdict = state.get("verdict") or {}
    t = Table(title=f"Verdict on v{state.get('last', '?')}: {state.get('outcome')}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if not verdict:
        t.add_row("reason", str(state.get("reason") or state.get("error") or "-"))
        return t
    metric = verdict.get("metric", "metric")
    t.add_row(f"{metric} (candidate)", f"{verdict['candidate']:.4f}")
    t.add_row(f"{metric} (production)", f"{verdict['current']:.4f}")
    t.add_row("difference", f"{verdict['difference']:+.4f}  (CI {verdict['ci'][0]:+.4f} .. {verdict['ci'][1]:+.4f} "
              f"at {verdict['confidence']:.0%})")
    t.add_row("judged rows (n)", str(verdict["n"]))
    t.add_row("test", f"{verdict['test']}, one-sided p = {verdict['p_value']:.3g}")
    guards = verdict.get("guards") or {}
    cand, prod = guards.get("candidate") or {}, guards.get("production") or {}
    t.add_row("guards", f"{'[green]passed[/]' if guards.get('passed') else '[red]failed[/]'}: {guards.get('reason')}")
    if cand or prod:
        t.add_row("p99 / errors", f"candidate {cand.get('p99_ms')} ms / {cand.get('errors', 0)}, "
                  f"production {prod.get('p99_ms')} ms / {prod.get('errors', 0)}")
    t.add_row("reason", str(verdict.get("reason")))
    return t


# -- the demo --------------------------------------------------------------------------------------------------

def run_demo(root: Path, *, worse: bool, console: Any, timeout_s: float = 300) -> dict[str, Any]:
    """Serve the prepared project at ``root`` inside the connected (or an embedded) Ray cluster (``Pipeline.up``:
    train, register, deploy; then the loop's controller, as ``loom up`` starts it), send drifted labelled traffic
    and show the round live until it is decided (or ``timeout_s`` after the model is served); print the verdict
    and return ``{outcome, version, previous, seconds, requests, failed, verdict, ...}``."""
    from rich.live import Live

    from runtime import Pipeline, load_project
    from runtime.retrain_loop import RetrainLoop
    from runtime.serving import ServingClient
    from runtime.serving.client import serving_token

    started, began = time.time(), time.monotonic()
    root = Path(root)
    result = Pipeline(root, console=console).up()
    project = load_project(root)
    start_loop(project)
    served = time.monotonic()
    loop = RetrainLoop(project, console=console)
    traffic_rows = new_concept(generator(root).generate(3000, seed=22, drift=1.0))
    traffic = Traffic(result.url, traffic_rows, serving_token(project))
    watch = Watch(ServingClient.for_project(project, timeout_s=30), loop, traffic, started)
    console.print(f"Serving {MODEL} v{result.version.version} at {result.url}; sending drifted, labelled traffic"
                  f"{' (the retrain data has shuffled labels: expect a rollback)' if worse else ''}")
    traffic.start()
    decided = None
    try:
        with Live(watch.table(), console=console, refresh_per_second=2, transient=False) as live:
            while time.monotonic() - served < timeout_s:
                watch.poll()
                live.update(watch.table())
                state = watch.state
                if state.get("phase") == "idle" and state.get("outcome") and \
                        float(state.get("finished_at", 0)) >= started:
                    decided = time.monotonic()
                    break
                time.sleep(0.5)
        console.print()
    finally:
        traffic.halt.set()
        traffic.join(timeout=60)
    state = watch.state
    if decided is None:
        console.print(f"[red]no decision within {timeout_s:.0f} s[/] (loop state: {state}; controller: "
                      f"{watch.controller})")
        outcome = "timed-out"
    else:
        outcome = state["outcome"]
        console.print(verdict_table(state))
    finished = float(state.get("finished_at", 0)) if decided is not None else None
    seconds = {"up": round(served - began, 1),
               "start_to_decision": None if decided is None else round(decided - began, 1),
               "drift_to_decision": (None if finished is None or watch.drift_at is None
                                     else round(finished - watch.drift_at, 1))}
    out = {"outcome": outcome, "version": state.get("last", state.get("version")),
           "previous": result.version.version, "seconds": seconds, "requests": traffic.sent,
           "labelled_rows": traffic.labelled, "failed": len(traffic.failed), "failures": traffic.failed[:10],
           "verdict": state.get("verdict"), "state": state}
    if decided is not None:
        console.print(f"[bold]{outcome}[/] v{out['version']} (production was v{out['previous']}): drift detected → "
                      f"decision {seconds['drift_to_decision']} s, start → decision {seconds['start_to_decision']} s "
                      f"(of which loom up {seconds['up']} s); {traffic.sent:,} requests, {len(traffic.failed)} failed")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Watch Loom's retrain loop close itself on drifted traffic.")
    parser.add_argument("--worse", action="store_true",
                        help="retrain on shuffled labels, without captured traffic: the candidate must be rolled back")
    parser.add_argument("--port", type=int, default=8000, help="Ray Serve's HTTP port (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project directory")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the verdict once served")
    args = parser.parse_args(argv)

    from rich.console import Console

    import ray

    from runtime import load_project
    from runtime.serving import shutdown

    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="loom-demo-drift-"))
    root = prepare(tmp / "quickstart", worse=args.worse, port=args.port)
    console.print(f"Project copied to {root}")
    expected = "rolled-back" if args.worse else "promoted"
    try:
        result = run_demo(root, worse=args.worse, console=console, timeout_s=args.timeout)
    finally:
        try:
            shutdown(load_project(root))
        except Exception as err:  # noqa: BLE001 - nothing served (a failed start): nothing to stop
            console.print(f"[dim]shutdown: {err}[/]")
        if ray.is_initialized():
            ray.shutdown()
        if args.keep:
            console.print(f"The project is kept at {root}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for failure in result["failures"]:
        console.print(f"[red]failed:[/] {failure}")
    ok = result["outcome"] == expected and result["failed"] == 0
    mark = "[green]✓[/]" if ok else "[red]✗[/]"
    console.print(f"{mark} expected {expected}, got {result['outcome']}; {result['failed']} failed requests")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
