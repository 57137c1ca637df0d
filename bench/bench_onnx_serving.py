"""ONNX serving against torch serving of the quickstart model, side by side in one run.

The quickstart's network (TabularMLP, hidden ``[64, 32]``, over its 15 encoded columns) is served twice by one Loom
model server (``LoomApp`` over ``ModelServer``: decoding, validation, encoding, dynamic batching, capture at the
quickstart's sample rate, metrics) under uvicorn in its own process with one thread for the network:

- ``torch``: its weights as safetensors with the architecture, registered as ``loom models import --format torch``
  does (``runtime.formats.import_model``), run by torch;
- ``onnx``: the same weights exported by ``torch.onnx.export`` and registered as ``loom models import --format onnx``
  does, run by onnxruntime.

Both take the quickstart's ``loom.yaml`` as their signature, so both have the same encoding (the passthrough of
imported models) and give the same answers: only the network's format differs.

Both get the same request (OIP JSON, the quickstart's 8 inputs; one row, and 64 rows); load comes from ``wrk``
(keep-alive connections), rounds interleave the two and the median round is reported with the ratio onnx/torch.
The network time of each is printed too.

    .venv/bin/python bench/bench_onnx_serving.py [--duration 5] [--rounds 3] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_serving import free_port, run_wrk  # noqa: E402

FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "paperless_billing", "contract",
            "internet_service", "payment_method"]
OIP_TYPES = {"tenure_months": "INT64", "support_calls": "INT64", "monthly_charges": "FP64",
             "total_charges": "FP64", "paperless_billing": "BOOL"}


def make_project(work: Path) -> Path:
    """The quickstart with its data, ``torch`` v1 (trained-style bundle) and ``onnx`` v1 (the same weights)."""
    import shutil

    import pandas as pd
    import yaml

    from runtime import get_plugins, load_project
    from runtime.formats import ImportFile, LoadLimits, Signature, import_model
    from runtime.model import ModelBundle, Preprocessor, TabularMLP

    root = work / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", root, ignore=shutil.ignore_patterns("data", ".loom"))
    subprocess.run([sys.executable, "generate_data.py"], cwd=root, check=True, capture_output=True)
    cfg = yaml.safe_load((root / "loom.yaml").read_text())
    cfg["monitoring"]["interval_s"] = None
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    project = load_project(root)
    plugins = get_plugins()
    registry = plugins.registry("local", state_dir=project.state_dir, options={})
    frame = pd.read_csv(root / "data" / "customers.csv")
    schema = {c: project.config.data.columns[c] for c in FEATURES}
    pre = Preprocessor.fit(frame, schema)
    torch.manual_seed(0)
    kwargs = {"in_features": pre.n_features, "out_features": 2, "hidden": [64, 32], "dropout": 0.0}
    net = TabularMLP(**kwargs).eval()
    bundle = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre,
                         classes=[False, True], inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                         label="churned", state_dict=net.state_dict())
    registry.register("trained", bundle.to_artifacts(), alias="production")
    signature = Signature.of_project(project)
    weights = bundle.to_artifacts()["model.safetensors"]
    import_model(registry, "torch", "torch", ImportFile(weights, "quickstart.safetensors"), plugins=plugins,
                 signature=signature, architecture="runtime.model:TabularMLP",
                 options={"hidden": [64, 32], "dropout": 0.0}, limits=LoadLimits.of(project), alias="production")
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, pre.n_features),), buf, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    import_model(registry, "onnx", "onnx", ImportFile(buf.getvalue(), "quickstart.onnx"), plugins=plugins,
                 signature=signature, limits=LoadLimits.of(project), alias="production")
    return root


def network_ms(root: Path) -> dict[str, float]:
    """Network time of each version on 1 and 64 rows (median of 500), in this process with one thread."""
    from runtime import get_plugins, load_project
    from runtime.formats import load_model

    torch.set_num_threads(1)
    project = load_project(root)
    plugins = get_plugins()
    registry = plugins.registry("local", state_dir=project.state_dir, options={})
    out = {}
    for name in ("torch", "onnx"):
        network = load_model(registry, name, 1, plugins=plugins).network
        for rows in (1, 64):
            x = (np.random.default_rng(0).normal(size=(rows, 15)).astype(np.float32),)
            for _ in range(50):
                network(x)
            times = []
            for _ in range(500):
                t = time.perf_counter()
                network(x)
                times.append(time.perf_counter() - t)
            out[f"{name} {rows} row(s)"] = statistics.median(times) * 1000
    return out


def body(work: Path, rows: int) -> Path:
    import pandas as pd

    frame = pd.read_csv(work / "quickstart" / "data" / "customers.csv").dropna().head(rows)  # OIP numbers: no nulls
    inputs = [{"name": c, "datatype": OIP_TYPES.get(c, "BYTES"), "shape": [rows],
               "data": json.loads(frame[c].to_json(orient="values"))} for c in FEATURES]
    path = work / f"rows-{rows}.json"
    path.write_text(json.dumps({"inputs": inputs}))
    return path


def serve(root: str, port: int) -> None:
    import uvicorn

    torch.set_num_threads(1)
    from runtime.serving.app import LoomApp
    from runtime.serving.routing import RoutingTable
    from runtime.serving.server import ModelServer

    server = ModelServer.from_project(root)
    server.apply(RoutingTable().deploy("torch", 1).deploy("onnx", 1))
    print("READY", flush=True)
    uvicorn.run(LoomApp(server), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.command[:1] == ["serve"]:
        serve(args.command[1], int(args.command[2]))
        return
    work = Path(tempfile.mkdtemp(prefix="loom-bench-onnx-"))
    root = make_project(work)
    print(f"network (ms): {json.dumps({k: round(v, 4) for k, v in network_ms(root).items()})}")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "serve", str(root), str(port)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY", "server did not start"
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        bodies = {rows: body(work, rows) for rows in (1, 64)}
        answers = {}
        for name in ("torch", "onnx"):  # warm-up, and a check that both answer, the same
            request = urllib.request.Request(f"{base}/v2/models/{name}/infer", data=bodies[64].read_bytes(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as r:
                outputs = {o["name"]: o["data"] for o in json.loads(r.read())["outputs"]}
                answers[name] = np.array(outputs["probabilities"])
        print(f"largest difference of the answers: {np.abs(answers['torch'] - answers['onnx']).max():.2e}")
        for clients in [int(c) for c in args.clients.split(",")]:
            for rows, path in bodies.items():
                runs: dict[str, list[dict[str, float]]] = {"torch": [], "onnx": []}
                for _ in range(args.rounds):
                    for name in runs:
                        runs[name].append(run_wrk(f"{base}/v2/models/{name}/infer", path, clients, args.duration))
                median = {name: sorted(r, key=lambda x: x["rps"])[len(r) // 2] for name, r in runs.items()}
                print(f"\n{clients} client(s), {rows} row(s) per request, median of {args.rounds} rounds of "
                      f"{args.duration}s")
                for name, r in median.items():
                    bad = r["non_2xx"] + r.get("socket_errors", 0) + r["timeouts"]
                    print(f"  {name:<6} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
                          f"  errors {bad:.0f}")
                print(f"  onnx / torch: {median['onnx']['rps'] / median['torch']['rps']:.2f}x req/s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
