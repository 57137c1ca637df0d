"""Serving throughput and latency, side by side in one run, on the same models and the same request body:

  (a) plain uvicorn + FastAPI + torch, one worker: the practical ceiling (parse, forward, answer; nothing else);
  (b) the same FastAPI app as a Ray Serve deployment with Serve's defaults (Python proxy, max_ongoing_requests 5);
  (c) Loom's full path: Ray Serve with Loom's ingress (HAProxy, direct ingress), OIP v2 JSON decoding with schema
      validation, preprocessing, dynamic batching, monitoring capture (sample rate 1) and metrics.

Two models: a tiny MLP (30 -> 64 -> 2, overhead-bound) and a wide MLP (30 -> 2304 -> 2304 -> 2) whose one-row
forward pass takes about 1 ms on the reference machine (`--calibrate` picks the width for another machine). Every request is one row as an Open Inference Protocol v2 JSON
body (30 FP32 tensors of shape [1]). Load comes from `wrk` with keep-alive connections. The servers of a model
run side by side and are measured in interleaved rounds (the median round is reported); while one is measured the
others are stopped with SIGSTOP, so idle Ray clusters take no CPU from it. Every process uses one torch thread.

    apt-get install -y wrk        # Debian/Ubuntu; `brew install wrk` on macOS
    .venv/bin/python bench/bench_serving.py [--duration 5] [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastapi import Request

ROOT = Path(__file__).resolve().parents[1]
N_INPUTS = 30
COLUMNS = [f"x{i}" for i in range(N_INPUTS)]
SERVERS = {"a": "uvicorn+FastAPI", "b": "Ray Serve defaults", "c": "Loom full path", "d": "Loom, capture off"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the models and the project that registers them ----------------------------------------------------------------


def _forward_ms(hidden: list[int]) -> float:
    import torch

    from runtime.model import TabularMLP

    model = TabularMLP(in_features=N_INPUTS, out_features=2, hidden=hidden, dropout=0.0).eval()
    x = torch.randn(1, N_INPUTS)
    with torch.inference_mode():
        for _ in range(30):
            model(x)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(50):
                model(x)
            times.append((time.perf_counter() - started) / 50)
    return sorted(times)[2] * 1000


def calibrate_wide(target_ms: float = 1.0) -> tuple[list[int], float]:
    """The two-hidden-layer width whose one-row forward pass is closest to ``target_ms``."""
    best: tuple[float, list[int], float] | None = None
    for width in range(1024, 4097, 256):
        ms = _forward_ms([width, width])
        score = abs(ms - target_ms)
        if best is None or score < best[0]:
            best = (score, [width, width], ms)
        if ms > 2 * target_ms:
            break
    assert best is not None
    return best[1], best[2]


def make_project(work: Path, port: int, wide_hidden: list[int], *, sample_rate: float = 1.0,
                 folder: str = "bench-project", monitoring: dict | None = None, replicas: int = 1) -> Path:
    """A Loom project whose registry holds ``tiny`` and ``wide`` (random weights, standardised inputs)."""
    import numpy as np
    import pandas as pd
    import torch
    import yaml

    from runtime import get_plugins, load_project
    from runtime.config import ColumnSpec
    from runtime.model import ModelBundle, Preprocessor, TabularMLP

    root = work / folder
    root.mkdir()
    columns = {"id": {"type": "int"}, "ts": {"type": "timestamp"}, "y": {"type": "bool"},
               **{c: {"type": "float", "nullable": False} for c in COLUMNS}}
    cfg = {"name": "bench-serving", "data": {"source": "csv://unused.csv", "entity": "id", "timestamp": "ts",
                                             "label": "y", "columns": columns},
           "model": {"name": "tiny"}, "serving": {"port": port, "replica_cpus": 1, "replicas": replicas},
           "monitoring": {"sample_rate": sample_rate, "window": 1000, "interval_s": None, **(monitoring or {})}}
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    project = load_project(root)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(500, N_INPUTS)), columns=COLUMNS)
    schema = {c: ColumnSpec(type="float", nullable=False) for c in COLUMNS}
    pre = Preprocessor.fit(frame, schema)
    registry = get_plugins().registry("local", state_dir=project.state_dir, options={})
    for name, hidden in (("tiny", [64]), ("wide", wide_hidden)):
        torch.manual_seed(0)
        kwargs = {"in_features": N_INPUTS, "hidden": hidden, "out_features": 2, "dropout": 0.0}
        bundle = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre,
                             classes=[False, True], inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                             label="y", state_dict=TabularMLP(**kwargs).state_dict())
        registry.register(name, bundle.to_artifacts(), alias="production")
    return root


def request_body() -> bytes:
    inputs = [{"name": c, "datatype": "FP32", "shape": [1], "data": [round(0.1 * i - 1.3, 3)]}
              for i, c in enumerate(COLUMNS)]
    return json.dumps({"inputs": inputs}).encode()


# -- the three servers, each run as `bench_serving.py serve <kind> ...` -----------------------------------------------


def _baseline_app(root: Path, name: str):
    """(a) and (b): parse the OIP JSON, forward, answer OIP JSON."""
    import torch
    from fastapi import FastAPI

    from runtime import get_plugins, load_project
    from runtime.model import ModelBundle

    registry = get_plugins().registry("local", state_dir=load_project(root).state_dir, options={})
    model = ModelBundle.from_registry(registry, name, 1).build()
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        body = await request.json()
        x = torch.tensor([[t["data"][0] for t in body["inputs"]]], dtype=torch.float32)
        with torch.inference_mode():
            proba = torch.softmax(model(x), dim=-1)
        return {"model_name": name, "outputs": [{"name": "probabilities", "datatype": "FP32",
                                                  "shape": list(proba.shape), "data": proba.flatten().tolist()}]}

    return app


def serve_plain(root: Path, name: str, port: int) -> None:
    import uvicorn

    app = _baseline_app(root, name)
    print("READY", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _ready_until_terminated() -> None:
    """Tell the parent the server is up, then serve until SIGTERM (which raises SystemExit here)."""
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def serve_ray_defaults(root: Path, name: str, port: int) -> None:
    import ray
    from ray import serve

    for key in [k for k in os.environ if k.startswith("RAY_SERVE_")]:
        del os.environ[key]
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="bench",
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = _baseline_app(root, name)

        @serve.deployment
        @serve.ingress(app)
        class Baseline:
            pass

        serve.run(Baseline.bind(), name="baseline", route_prefix="/")
        _ready_until_terminated()
    finally:
        serve.shutdown()
        ray.shutdown()


def serve_loom(root: Path) -> None:
    import ray
    from ray import serve

    from runtime import connect, load_project
    from runtime.serving import deploy

    connect()
    try:
        project = load_project(root)
        deploy(project, "tiny", "production")
        deploy(project, "wide", "production")
        _ready_until_terminated()
    finally:
        serve.shutdown()
        ray.shutdown()


# -- load generation ---------------------------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def run_wrk(url: str, body_file: Path, clients: int, duration: int,
            headers: dict[str, str] | None = None) -> dict[str, float]:
    """POST ``body_file`` (JSON unless ``headers`` say otherwise) from ``clients`` keep-alive connections."""
    script = body_file.with_suffix(".lua")
    lines = ['wrk.method = "POST"', *(f'wrk.headers["{k}"] = "{v}"' for k, v in
                                      (headers or {"Content-Type": "application/json"}).items()),
             f'local f = io.open("{body_file}", "rb")', 'wrk.body = f:read("*all")', "f:close()"]
    script.write_text("\n".join(lines) + "\n")
    cmd = ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{duration}s", "--timeout", "10s", "--latency",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Requests/sec" not in out:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
              "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
              "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
              "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
              "timeouts": 0, "non_2xx": 0}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        result["timeouts"] = int(errors.group(4))
        result["socket_errors"] = sum(int(errors.group(i)) for i in (1, 2, 3))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        result["non_2xx"] = int(non2xx.group(1))
    return result


class Server:
    """One server process, started for a measurement and stopped after it."""

    def __init__(self, kind: str, args: list[str], url: str, work: Path):
        self.kind, self.args, self.url, self.work = kind, args, url, work

    def __enter__(self) -> Server:
        # A private Ray temp dir: the Ray servers start their own cluster even if another one runs on this machine.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LOOM_RAY_LOGS": "0",
               "RAY_TMPDIR": tempfile.mkdtemp(prefix="lbs-", dir="/tmp")}
        log = open(self.work / f"server-{self.kind}.log", "w")
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", self.kind, *self.args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith("READY"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"server {self.kind} did not start")
        else:
            raise RuntimeError(f"server {self.kind} exited; see {self.work}/server-{self.kind}.log")
        self._wait_http()
        return self

    def _processes(self) -> list:
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def freeze(self) -> None:
        """Stop every process of the server (SIGSTOP) so that it takes no CPU while another server is measured."""
        for p in self._processes():
            with contextlib.suppress(Exception):
                p.suspend()

    @contextlib.contextmanager
    def running(self):
        for p in reversed(self._processes()):
            with contextlib.suppress(Exception):
                p.resume()
        time.sleep(1)  # timers that fired while stopped settle before measuring
        try:
            yield
        finally:
            self.freeze()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by the server and every process it started, by kind of process."""
        import psutil

        root = psutil.Process(self.proc.pid)
        total: dict[str, float] = {}
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                name = p.name()
            except psutil.Error:
                continue
            kind = ("replica" if "ServeReplica" in name or "SERVE_REPLICA" in name else
                    "haproxy" if "haproxy" in name else "server" if p.pid == root.pid else "ray")
            total[kind] = total.get(kind, 0.0) + t.user + t.system
        return total

    def _wait_http(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(self.url, request_body(), {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.url} did not answer")

    def __exit__(self, *exc) -> None:
        for p in reversed(self._processes()):
            with contextlib.suppress(Exception):
                p.resume()
        self.proc.terminate()  # Ray servers shut Serve and their cluster down, HAProxy included
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _measure(server: Server, url: str, body: Path, clients: int, duration: int) -> dict:
    before = server.cpu_seconds()
    r = run_wrk(url, body, clients, duration)
    used = {k: (v - before.get(k, 0.0)) / max(r["requests"], 1) * 1e6 for k, v in server.cpu_seconds().items()}
    r["cpu_us_per_request"] = sum(used.values())
    r["cpu_us_by_process"] = {k: round(v) for k, v in sorted(used.items())}
    return r


def measure(args: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu) or brew install wrk (macOS)")
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="loom-bench-serving-"))
    if args.calibrate:
        wide_hidden, wide_ms = calibrate_wide()
    else:
        wide_hidden, wide_ms = [args.wide_width] * 2, _forward_ms([args.wide_width] * 2)
    tiny_ms = _forward_ms([64])
    print(f"tiny MLP 30-64-2: {tiny_ms:.3f} ms per one-row forward; wide MLP 30-{wide_hidden[0]}-{wide_hidden[1]}-2: "
          f"{wide_ms:.3f} ms", flush=True)
    port = free_port()
    root = make_project(work, port, wide_hidden, sample_rate=args.c_sample_rate,
                        monitoring=json.loads(args.c_monitoring) if args.c_monitoring else None,
                        replicas=args.replicas)
    port_d = free_port()  # (d): the same project and weights with capture off (monitoring.sample_rate 0)
    root_d = make_project(work, port_d, wide_hidden, sample_rate=0.0, folder="bench-project-no-capture",
                          replicas=args.replicas)
    body = work / "body.json"
    body.write_bytes(request_body())
    results: dict = {"models": {"tiny": {"hidden": [64], "forward_ms": tiny_ms},
                                "wide": {"hidden": wide_hidden, "forward_ms": wide_ms}},
                     "duration_s": args.duration, "runs": {}}
    plan = {m: levels for m, levels in (("tiny", args.tiny_clients), ("wide", args.wide_clients)) if m in args.models}
    for model, levels in plan.items():
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[Server, str]] = {}
            for kind in args.servers:
                kind_port = {"c": port, "d": port_d}.get(kind) or free_port()
                server_args = ([str(root)] if kind == "c" else [str(root_d)] if kind == "d"
                               else [str(root), model, str(kind_port)])
                url = f"http://127.0.0.1:{kind_port}/v2/models/{model}/infer"
                server = stack.enter_context(Server(kind, server_args, url, work))
                run_wrk(url, body, 8, 2)  # warm-up
                server.freeze()
                servers[kind] = (server, url)
            for kind, (server, _) in servers.items():
                with server.running():
                    before = server.cpu_seconds()
                    time.sleep(args.duration)
                    idle = sum(server.cpu_seconds().values()) - sum(before.values())
                results.setdefault("idle_cpu_share", {}).setdefault(model, {})[kind] = round(idle / args.duration, 3)
            for clients in levels:
                rounds: dict[str, list[dict]] = {kind: [] for kind in servers}
                for _ in range(args.rounds):  # interleaved, so that the machine's background load hits all alike
                    for kind, (server, url) in servers.items():
                        with server.running():
                            rounds[kind].append(_measure(server, url, body, clients, args.duration))
                for kind, runs in rounds.items():
                    r = sorted(runs, key=lambda x: x["rps"])[len(runs) // 2]  # the median round
                    r["rounds_rps"] = [round(x["rps"]) for x in runs]
                    results["runs"].setdefault(model, {}).setdefault(kind, {})[clients] = r
                    print(f"{model:<5} {SERVERS[kind]:<19} {clients:>4} clients: {r['rps']:8.0f} req/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:8.2f} ms  timeouts {r['timeouts']}  "
                          f"non-2xx {r['non_2xx']}  server CPU {r['cpu_us_per_request']:6.0f} us/req "
                          f"{r['cpu_us_by_process']}  rounds {r['rounds_rps']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: dict) -> str:
    lines = ["| model | clients | server | req/s | p50 ms | p99 ms | timeouts | non-2xx | server CPU/request | vs (a) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, by_kind in results["runs"].items():
        levels = sorted({c for runs in by_kind.values() for c in runs})
        for clients in levels:
            base = by_kind.get("a", {}).get(clients, {}).get("rps")
            for kind, runs in by_kind.items():
                r = runs.get(clients)
                if r is None:
                    continue
                ratio = f"{r['rps'] / base:.2f}x" if base else "-"
                lines.append(f"| {model} | {clients} | ({kind}) {SERVERS[kind]} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                             f"{r['p99_ms']:.2f} | {r['timeouts']} | {r['non_2xx']} | "
                             f"{r['cpu_us_per_request']:,.0f} us | {ratio} |")
    for model, by_kind in results["runs"].items():  # capture's cost on the full path, round by round
        on, off = by_kind.get("c", {}), by_kind.get("d", {})
        for clients in sorted(set(on) & set(off)):
            paired = [a / b for a, b in zip(on[clients]["rounds_rps"], off[clients]["rounds_rps"])]
            lines.append(f"\ncapture on / off, {model}, {clients} clients: {on[clients]['rps'] / off[clients]['rps']:.3f}x "
                         f"(medians); round by round {' / '.join(f'{x:.3f}' for x in paired)}; median of the "
                         f"paired rounds {sorted(paired)[len(paired) // 2]:.3f}x")
    idle = results.get("idle_cpu_share", {})
    for model, by_kind in idle.items():
        shares = ", ".join(f"({k}) {v:.0%}" for k, v in by_kind.items())
        lines.append(f"\nIdle CPU of each server with {model} loaded, in cores: {shares}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        kind, rest = sys.argv[2], sys.argv[3:]
        sys.path.insert(0, str(ROOT))
        import torch

        torch.set_num_threads(1)
        if kind == "a":
            serve_plain(Path(rest[0]), rest[1], int(rest[2]))
        elif kind == "b":
            serve_ray_defaults(Path(rest[0]), rest[1], int(rest[2]))
        else:  # c and d: Loom, with the project given
            serve_loom(Path(rest[0]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="Seconds per measurement.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Interleaved measurements of each server per level; the median round is reported.")
    parser.add_argument("--tiny-clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32, 256])
    parser.add_argument("--wide-clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 256])
    parser.add_argument("--servers", type=lambda s: s.split(","), default=["a", "b", "c"],
                        help="a: uvicorn+FastAPI, b: Ray Serve defaults, c: Loom, d: Loom with capture off.")
    parser.add_argument("--models", type=lambda s: s.split(","), default=["tiny", "wide"])
    parser.add_argument("--wide-width", type=int, default=2304,
                        help="Hidden width of the wide MLP (2304: about 1.1 ms per one-row forward on the reference "
                             "machine).")
    parser.add_argument("--calibrate", action="store_true",
                        help="Pick the wide width whose one-row forward pass is closest to 1 ms here instead.")
    parser.add_argument("--c-sample-rate", type=float, default=1.0,
                        help="monitoring.sample_rate of (c); 0 makes (c) and (d) the same server, an A/A check.")
    parser.add_argument("--c-monitoring", help="JSON: more monitoring settings for (c), e.g. '{\"store\": null}' to "
                                               "capture into the drift window only, without the Parquet store.")
    parser.add_argument("--replicas", type=int, default=1,
                        help="Serving replicas of (c) and (d); with 2, both feed the deployment's one monitor.")
    parser.add_argument("--json", type=Path, help="Also write the raw results here.")
    args = parser.parse_args()
    results = measure(args)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
