"""The per-worker training step runs without Ray (so it can be checked on a GPU machine on its own)."""

from __future__ import annotations

import numpy as np
import torch

from runtime.training import fit_local, roc_auc, train_epoch


def _arrays(n=4000, d=10):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return {"x_train": x[:3000], "y_train": y[:3000], "x_val": x[3000:], "y_val": y[3000:]}


CONFIG = {"architecture": "runtime.model:TabularMLP",
          "kwargs": {"n_inputs": 10, "hidden": [32], "n_classes": 2, "dropout": 0.0},
          "epochs": 5, "batch_size": 64, "learning_rate": 1e-2, "seed": 0}


def test_fit_local_learns_without_ray():
    out = fit_local(CONFIG, _arrays(), device="cpu")
    history = out["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_auc"] > 0.95


def test_shards_are_disjoint_and_cover_the_data():
    """Two workers drawing the same permutation take disjoint, equal halves."""
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(1, 2)

        def forward(self, x):
            seen.append(x[:, 0].clone())
            return self.w(x)

    x = torch.arange(100, dtype=torch.float32)[:, None]
    y = torch.zeros(100, dtype=torch.long)
    for rank in (0, 1):
        model = Probe()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_epoch(model, opt, x, y, batch_size=16, generator=torch.Generator().manual_seed(3), rank=rank,
                    world_size=2)
    halves = torch.cat(seen).long().tolist()
    assert len(halves) == 100 and sorted(halves) == list(range(100))


def test_roc_auc_matches_definition():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    pairs = [(p, n) for p in s[y == 1] for n in s[y == 0]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(y, s) == expected
    assert np.isnan(roc_auc(np.ones(3), s[:3]))
