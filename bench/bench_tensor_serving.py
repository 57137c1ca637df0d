"""Tensor inputs against tabular inputs on Loom's request path, side by side in one run, for two models with the
same forward cost.

- ``tabular``: Loom's MLP over 30 float columns (30 -> H -> H -> 2), each request one row as 30 OIP FP32 tensors of
  shape [1] (JSON), as in bench_serving.py;
- ``image``: a [1, 28, 28] tensor input, flattened and projected to 30 values by one linear layer, then the same
  MLP body (784 -> 30 -> H -> H -> 2): the extra 23,520 multiply-adds are about 1% of the body's at H = 1024 (the
  measured one-row forward times are printed). Requests are one [1, 1, 28, 28] FP32 tensor, with tritonclient's
  binary tensor extension (its default) and as JSON (784 numbers).

Both models are served by one Loom model server (``LoomApp`` over ``ModelServer``: decoding, validation,
encoding, dynamic batching, capture at sample rate 1, metrics) under uvicorn in its own process with one torch
thread, so the comparison is of the request path alone, without Ray Serve's hops (which are the same for both).
Load comes from ``wrk`` (keep-alive connections); rounds are interleaved and the median round is reported.

    .venv/bin/python bench/bench_tensor_serving.py [--duration 5] [--rounds 3] [--clients 1,8] [--hidden 1024]
"""

from __future__ import annotations

import argparse
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
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_serving import COLUMNS, N_INPUTS, free_port, run_wrk  # noqa: E402


class ImageMLP(nn.Module):
    """Flatten, project to ``N_INPUTS`` values, then the same body as TabularMLP."""

    def __init__(self, input_shapes: dict[str, list[int]], out_features: int, hidden: list[int]):
        super().__init__()
        from runtime.model import TabularMLP

        c, h, w = input_shapes["image"]
        self.project = nn.Linear(c * h * w, N_INPUTS)
        self.body = TabularMLP(in_features=N_INPUTS, out_features=out_features, hidden=hidden, dropout=0.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(image.flatten(1)))


def make_project(work: Path, hidden: list[int]) -> Path:
    import pandas as pd
    import yaml

    from runtime import get_plugins, load_project
    from runtime.config import ColumnSpec
    from runtime.model import ModelBundle, Preprocessor, TabularMLP

    root = work / "project"
    root.mkdir()
    columns = {"id": {"type": "int"}, "ts": {"type": "timestamp"}, "y": {"type": "bool"},
               **{c: {"type": "float", "nullable": False} for c in COLUMNS}}
    cfg = {"name": "bench-tensors", "data": {"source": "csv://unused.csv", "entity": "id", "timestamp": "ts",
                                             "label": "y", "columns": columns},
           "model": {"name": "tabular"}, "serving": {"port": 8000},
           "monitoring": {"sample_rate": 1.0, "window": 1000, "interval_s": None}}
    (root / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    project = load_project(root)
    registry = get_plugins().registry("local", state_dir=project.state_dir, options={})
    rng = np.random.default_rng(0)
    schema = {c: ColumnSpec(type="float", nullable=False) for c in COLUMNS}
    pre = Preprocessor.fit(pd.DataFrame(rng.normal(size=(500, N_INPUTS)), columns=COLUMNS), schema)
    torch.manual_seed(0)
    kwargs = {"in_features": N_INPUTS, "out_features": 2, "hidden": hidden, "dropout": 0.0}
    tabular = ModelBundle(architecture="runtime.model:TabularMLP", kwargs=kwargs, preprocessor=pre,
                          classes=[False, True], inputs={c: s.model_dump(exclude_none=True) for c, s in schema.items()},
                          label="y", state_dict=TabularMLP(**kwargs).state_dict())
    registry.register("tabular", tabular.to_artifacts(), alias="production")
    image_kwargs = {"input_shapes": {"image": [1, 28, 28]}, "out_features": 2, "hidden": hidden}
    image = ModelBundle(architecture="bench_tensor_serving:ImageMLP", kwargs=image_kwargs,
                        preprocessor=Preprocessor(), classes=[False, True],
                        inputs={"image": {"type": "tensor", "dtype": "FP32", "shape": [1, 28, 28]}},
                        label="y", state_dict=ImageMLP(**image_kwargs).state_dict())
    registry.register("image", image.to_artifacts(), alias="production")
    return root


def forward_ms(hidden: list[int]) -> dict[str, float]:
    """One-row forward time of each model (median of 200), in this process with one thread."""
    from runtime.model import TabularMLP

    torch.set_num_threads(1)
    models = {"tabular": (TabularMLP(in_features=N_INPUTS, out_features=2, hidden=hidden, dropout=0.0).eval(),
                          torch.randn(1, N_INPUTS)),
              "image": (ImageMLP({"image": [1, 28, 28]}, 2, hidden).eval(), torch.randn(1, 1, 28, 28))}
    out = {}
    with torch.inference_mode():
        for name, (model, x) in models.items():
            for _ in range(20):
                model(x)
            times = []
            for _ in range(200):
                t = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times) * 1000
    return out


def bodies(work: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """The request bodies and their headers: tabular JSON, image binary (as tritonclient builds it), image JSON."""
    import tritonclient.http as tc

    image = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    tabular = json.dumps({"inputs": [{"name": c, "datatype": "FP32", "shape": [1], "data": [round(0.1 * i - 1.3, 3)]}
                                     for i, c in enumerate(COLUMNS)]}).encode()
    inp = tc.InferInput("image", [1, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(image, binary_data=True)
    binary, header_length = tc.InferenceServerClient.generate_request_body([inp])
    as_json = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                      "data": image.ravel().round(5).tolist()}]}).encode()
    out = {}
    for name, body, headers in (
            ("tabular JSON", tabular, {"Content-Type": "application/json"}),
            ("image binary", binary, {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(header_length)}),
            ("image JSON", as_json, {"Content-Type": "application/json"})):
        path = work / f"{name.replace(' ', '-')}.body"
        path.write_bytes(body)
        out[name] = (path, headers)
    return out


def serve(root: str, port: int) -> None:
    import uvicorn

    torch.set_num_threads(1)
    from runtime.serving.app import LoomApp
    from runtime.serving.routing import RoutingTable
    from runtime.serving.server import ModelServer

    server = ModelServer.from_project(root)
    table = RoutingTable().deploy("tabular", 1).deploy("image", 1)
    server.apply(table)
    print("READY", flush=True)
    uvicorn.run(LoomApp(server), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.command[:1] == ["serve"]:
        serve(args.command[1], int(args.command[2]))
        return
    hidden = [args.hidden, args.hidden]
    work = Path(tempfile.mkdtemp(prefix="loom-bench-tensors-"))
    root = make_project(work, hidden)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(root)])}
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
        reqs = bodies(work)
        targets = {"tabular JSON": "tabular", "image binary": "image", "image JSON": "image"}
        for name, (body, headers) in reqs.items():  # warm-up, and a check that each answers 200
            request = urllib.request.Request(f"{base}/v2/models/{targets[name]}/infer", data=body.read_bytes(),
                                             headers=headers)
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200, name
        print(f"one-row forward (ms): {json.dumps({k: round(v, 3) for k, v in forward_ms(hidden).items()})}")
        for clients in [int(c) for c in args.clients.split(",")]:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in reqs}
            for _ in range(args.rounds):
                for name, (body, headers) in reqs.items():
                    runs[name].append(run_wrk(f"{base}/v2/models/{targets[name]}/infer", body, clients,
                                              args.duration, headers))
            median = {name: sorted(r, key=lambda x: x["rps"])[len(r) // 2] for name, r in runs.items()}
            base_rps = median["tabular JSON"]["rps"]
            print(f"\n{clients} client(s), median of {args.rounds} rounds of {args.duration}s")
            for name, r in median.items():
                bad = r["non_2xx"] + r.get("socket_errors", 0) + r["timeouts"]
                print(f"  {name:<13} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
                      f"  errors {bad:.0f}  ratio to tabular {r['rps'] / base_rps:.2f}x")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
