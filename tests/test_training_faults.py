"""Ray Train fault tolerance: a training worker killed mid-run is replaced and the run resumes from its last
checkpoint instead of starting over, with the optimizer state and the shuffle it had: it ends where an uninterrupted
run of the same config ends."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from runtime.tasks import Classification
from runtime.training import load_checkpoint, run_training

pytestmark = pytest.mark.slow


def _arrays(n: int = 60_000, d: int = 24) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    cut = int(n * 0.8)
    return {"x_train": x[:cut], "y_train": y[:cut], "x_val": x[cut:], "y_val": y[cut:]}


def _train_worker_pids() -> list[int]:
    from ray._private.state import actors  # GCS actor table of *this* cluster (no dashboard address needed)

    return [a["Pid"] for a in actors().values()
            if a.get("ActorClassName") == "RayTrainWorker" and a.get("State") == "ALIVE" and a.get("Pid")]


def test_killed_worker_resumes_from_checkpoint(ray_cluster, tmp_path):
    epochs = 8
    seen: list[int] = []
    killed: list[int] = []
    lock = threading.Lock()

    def on_epoch(metrics):
        with lock:
            seen.append(metrics["epoch"])
            if metrics["epoch"] == 3 and not killed:
                pids = _train_worker_pids()
                assert pids, "no live Ray Train workers found"
                os.kill(pids[-1], signal.SIGKILL)  # a real process kill, not an exception in user code
                killed.append(pids[-1])

    config = {"architecture": "runtime.model:TabularMLP",
              "kwargs": {"in_features": 24, "hidden": [256, 256], "out_features": 2, "dropout": 0.0},
              "task": Classification([0, 1]).to_dict(),
              "epochs": epochs, "batch_size": 64, "learning_rate": 1e-3, "seed": 0}
    result = run_training(config, _arrays(), workers=2, use_gpu=False, storage_path=tmp_path, run_name="faulty",
                          on_epoch=on_epoch, max_failures=2)

    assert killed, "the worker was never killed"
    assert [h["epoch"] for h in result.history] == list(range(1, epochs + 1))
    assert seen[-1] == epochs
    # Resumed, not restarted: epochs 1-3 were reported before the kill and never again after it.
    after_kill = seen[seen.index(3) + 1:]
    assert after_kill and min(after_kill) >= 3, seen
    assert killed[0] not in _train_worker_pids()
    assert result.metrics["val_accuracy"] > 0.7

    # The same config without a kill: the same epochs, the same number of optimizer steps (Adam's own per-parameter
    # count continued across the resume instead of restarting), and the same weights (same shuffle, same moments).
    straight = run_training(config, _arrays(), workers=2, use_gpu=False, storage_path=tmp_path, run_name="straight",
                            max_failures=0)
    steps = epochs * -(-(len(_arrays()["y_train"]) // 2) // config["batch_size"])
    assert [h["epoch"] for h in straight.history] == [h["epoch"] for h in result.history]
    assert result.optimizer_steps == straight.optimizer_steps == steps
    for run in (result, straight):
        adam = load_checkpoint(run.checkpoint_path)["optimizer"]["state"]
        assert {int(s["step"]) for s in adam.values()} == {steps}
    worst = max(float((result.state_dict[k] - v).abs().max()) for k, v in straight.state_dict.items())
    assert worst < 1e-4, worst
    assert result.metrics["val_loss"] == pytest.approx(straight.metrics["val_loss"], rel=1e-4)
