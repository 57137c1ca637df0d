"""Cold `loom up examples/quickstart`: seconds from launch to the first successful prediction, by stage.

Each run is a fresh `loom up` process (a new embedded Ray cluster) in a fresh copy of the quickstart. The second
configuration reruns it with Ray Train's default 2 s controller poll, side by side, to show what Loom's 0.25 s
setting buys.

    .venv/bin/python bench/bench_cold_up.py [--runs 1]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
RECORD = [{"tenure_months": 3, "monthly_charges": 89.5, "total_charges": 268.5, "support_calls": 4,
           "paperless_billing": True, "contract": "month-to-month", "internet_service": "fiber",
           "payment_method": "electronic-check"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_prediction(url: str, deadline: float) -> float:
    body = json.dumps(RECORD).encode()
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"{url}/predict/churn", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("no prediction within the deadline")


def run_once(env_extra: dict[str, str]) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    shutil.copytree(ROOT / "examples" / "quickstart", work / "qs", ignore=shutil.ignore_patterns("data", ".loom"))
    subprocess.run([sys.executable, "generate_data.py"], cwd=work / "qs", check=True, capture_output=True)
    port = free_port()
    env = {**os.environ, **env_extra}
    log = work / "up.log"
    started = time.monotonic()
    # A shell's background job inherits SIGINT ignored; restore it so the child's Ctrl-C handling is what runs.
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "up", str(work / "qs"), "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        done = first_prediction(f"http://127.0.0.1:{port}", started + 300)
        while "Serving" not in log.read_text() and proc.poll() is None:  # Ctrl-C once it serves, not mid-deploy
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stop = time.monotonic()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            print(f"loom up did not stop on Ctrl-C within 120 s:\n{log.read_text()[-2000:]}", file=sys.stderr)
        stopped = time.monotonic() - stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = log.read_text()
        shutil.rmtree(work, ignore_errors=True)
    stages = {m[0]: float(m[1]) for m in re.findall(r"✓ (\w+)\s+([\d.]+)s", out)}
    return {**stages, "first_prediction": round(done - started, 2), "stop": round(stopped, 2),
            "exit_code": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    configs = {"loom (poll 0.25 s)": {}, "ray train default poll (2 s)": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for _ in range(args.runs):
        for name, env in configs.items():  # interleaved so both see the same machine load
            results[name].append(run_once(env))
    cols = ["ingest", "validate", "features", "cluster", "train", "register", "deploy", "first_prediction", "stop"]
    print("| configuration | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, runs in results.items():
        best = min(runs, key=lambda r: r["first_prediction"])
        print(f"| {name} | " + " | ".join(f"{best.get(c, float('nan')):.1f}" for c in cols) + " |")
    a, b = (min(r["first_prediction"] for r in results[n]) for n in configs)
    print(f"\nratio (default poll / loom): {b / a:.2f}x; exit codes: "
          f"{[r['exit_code'] for runs in results.values() for r in runs]}")


if __name__ == "__main__":
    main()
