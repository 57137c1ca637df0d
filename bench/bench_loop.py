"""Serving while the retrain loop trains: the quickstart's req/s idle and during a round's training, side by side in
one run, with the round's training workers at the loop's default OS priority (``retrain.nice: 10``) and at the
same priority as serving (``nice: 0``).

    python bench/bench_loop.py [--clients 8] [--duration 10] [--epochs 40]

Goal (issue 17): while a round trains, serving keeps >= 0.5x its idle throughput. Needs ``wrk`` on PATH.
The round is started on the driver (``RetrainLoop.start``, what ``loom retrain`` does) and rolled back after the
measurement; its Ray Train workers run in the same cluster as the replicas, as with the controller.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_serving import free_port, run_wrk  # noqa: E402

QUICKSTART = HERE.parent / "examples" / "quickstart"


def make_project(work: Path, port: int, epochs: int) -> Path:
    root = work / "qs"
    root.mkdir()
    for name in ("loom.yaml", "generate_data.py"):
        shutil.copy(QUICKSTART / name, root / name)
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["name"] = "bench-loop"
    cfg["serving"] = {"port": port, "route_prefix": "/"}
    cfg["training"] = {"workers": 1, "epochs": epochs, "batch_size": 128}
    cfg["monitoring"] = {"window": 500, "interval_s": None,
                         "retrain": {"enabled": True, "controller": False, "shadow_requests": 0, "cooldown_s": 0,
                                     "workers": 1, "canary_percent": 10}}
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def during_round(project, nice: int, url: str, body: Path, clients: int, duration: int) -> dict:
    """Start a round with ``retrain.nice = nice``, measure serving while it trains, then roll the round back."""
    from runtime.retrain_loop import RetrainLoop

    cfg = project.config
    retrain = cfg.monitoring.retrain.model_copy(update={"nice": nice})
    changed = project.model_copy(update={"config": cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(
        update={"retrain": retrain})})})
    loop = RetrainLoop(changed)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(loop.start()), daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while loop.state().get("phase") != "training" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(8)  # Ray Train's workers start and the first epochs run
    result = run_wrk(url, body, clients, duration)
    result["still_training"] = worker.is_alive()
    worker.join()
    state = loop.state()
    if state.get("phase") == "canary":
        loop._retire(state, "benchmark round")
    result["round"] = outcome[0] if outcome else "?"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=40, help="epochs of each training (the round must outlast "
                        "the measurement)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH (apt-get install -y wrk)")

    from runtime import Pipeline, load_project
    from runtime.serving import shutdown

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = make_project(work, free_port(), args.epochs)
        result = Pipeline(root).up()
        project = load_project(root)
        import pandas as pd

        row = pd.read_csv(root / "data" / "customers.csv").drop(columns=["customer_id", "event_time", "churned"])
        body = work / "body.json"
        body.write_text(row.head(1).to_json(orient="records"))
        url = f"{result.url}/predict/churn"
        try:
            run_wrk(url, body, args.clients, 3)  # warm up
            idle = run_wrk(url, body, args.clients, args.duration)
            niced = during_round(project, 10, url, body, args.clients, args.duration)
            idle2 = run_wrk(url, body, args.clients, args.duration)
            plain = during_round(project, 0, url, body, args.clients, args.duration)
        finally:
            shutdown(project)
    base = (idle["rps"] + idle2["rps"]) / 2
    rows = [("idle (mean of before and between)", base, None), ("training, retrain.nice 10", niced["rps"], niced),
            ("training, nice 0", plain["rps"], plain)]
    print(f"\n{args.clients} clients, {args.duration} s each, quickstart /predict/churn, one row per request")
    print(f"{'':38} {'req/s':>8} {'x idle':>7} {'p99 ms':>7}  still training at the end")
    print(f"{'idle before':38} {idle['rps']:8.0f} {'':>7} {idle['p99_ms']:7.1f}")
    print(f"{'idle between':38} {idle2['rps']:8.0f} {'':>7} {idle2['p99_ms']:7.1f}")
    for name, rps, r in rows[1:]:
        print(f"{name:38} {rps:8.0f} {rps / base:7.2f}x {r['p99_ms']:7.1f}  {r['still_training']}")
    print(json.dumps({"idle": [idle, idle2], "nice10": niced, "nice0": plain}, default=str))


if __name__ == "__main__":
    main()
