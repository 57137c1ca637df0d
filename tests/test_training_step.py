"""The per-worker training loop and the training step (runtime.steps) run without Ray (so they can be checked on a
GPU machine on their own): Loom's default step, a project's own step, regression, several model inputs, bad
``training.step`` values, and checkpoints (safetensors + JSON, never pickle) that resume exactly."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
import torch

from runtime.errors import ConfigError, LoomError
from runtime.steps import StepContext, TrainingStep, load_step, make_step
from runtime.tasks import Classification, Regression
from runtime.training import (
    fit_local,
    load_checkpoint,
    roc_auc,
    run_training,
    save_checkpoint,
    train_epoch,
)

HERE = __name__  # the import path of this module, as pytest imported it: steps below are 'HERE:Name'


def _arrays(n=4000, d=10):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return {"x_train": x[:3000], "y_train": y[:3000], "x_val": x[3000:], "y_val": y[3000:]}


CONFIG = {"architecture": "runtime.model:TabularMLP",
          "kwargs": {"in_features": 10, "out_features": 2, "hidden": [32], "dropout": 0.0},
          "task": Classification([0, 1]).to_dict(),
          "epochs": 5, "batch_size": 64, "learning_rate": 1e-2, "seed": 0}


def test_fit_local_learns_without_ray():
    out = fit_local(CONFIG, _arrays(), device="cpu")
    history = out["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_auc"] > 0.95
    assert {"epoch_seconds", "samples_per_second", "timestamp", "val_loss", "val_accuracy"} <= history[-1].keys()
    # Loom's default step: Adam at the configured rate, one step per batch, no scheduler.
    assert type(out["step"]) is TrainingStep and out["scheduler"] is None
    assert isinstance(out["optimizer"], torch.optim.Adam) and out["optimizer"].param_groups[0]["lr"] == 1e-2
    assert out["optimizer_steps"] == 5 * math.ceil(3000 / 64)


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


# -- a project's own step ------------------------------------------------------------------------------------------


class ScheduledSGD(TrainingStep):
    """SGD with momentum, the rate halved every epoch (StepLR), gradients clipped by the default step's option; it
    records the gradient norm the optimizer sees (after clipping) and draws from every RNG each step."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.grad_norms: list[float] = []
        self.draws: list[tuple[float, float, float]] = []

    def configure_optimizers(self, model):
        opt = torch.optim.SGD(model.parameters(), lr=self.ctx.learning_rate, momentum=0.9)

        def record(optimizer, args, kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        opt.register_step_pre_hook(record)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def step(self, model, inputs, target, optimizer):
        self.draws.append((random.random(), float(np.random.random()), float(torch.rand(()))))
        return super().step(model, inputs, target, optimizer)


def scheduled_sgd(ctx):
    """A factory function is a step too."""
    return ScheduledSGD(ctx)


def test_a_custom_step_with_its_own_optimizer_scheduler_and_clipping_is_used():
    config = {**CONFIG, "epochs": 3, "learning_rate": 0.1, "step": f"{HERE}:ScheduledSGD",
              "step_options": {"clip_grad_norm": 0.05}}
    out = fit_local(config, _arrays(), device="cpu")
    step, opt = out["step"], out["optimizer"]
    assert type(step) is ScheduledSGD and type(opt) is torch.optim.SGD
    assert isinstance(out["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)  # halved after each of the 3 epochs
    assert all("momentum_buffer" in s for s in opt.state.values())
    per_epoch = math.ceil(3000 / 64)
    assert step.ctx.steps_per_epoch == per_epoch and step.ctx.options == {"clip_grad_norm": 0.05}
    assert len(step.grad_norms) == out["optimizer_steps"] == 3 * per_epoch
    assert max(step.grad_norms) <= 0.05 * (1 + 1e-4)
    assert np.median(step.grad_norms) > 0.049  # clipped down to the bound, not small by themselves

    unclipped = fit_local({**config, "step_options": {}}, _arrays(), device="cpu")["step"]
    assert np.median(unclipped.grad_norms) > 0.1
    assert out["history"][-1]["val_auc"] > 0.9


def test_a_step_factory_function_is_called_with_the_context():
    out = fit_local({**CONFIG, "epochs": 1, "step": f"{HERE}:scheduled_sgd"}, _arrays(), device="cpu")
    assert type(out["step"]) is ScheduledSGD
    ctx = out["step"].ctx
    assert isinstance(ctx, StepContext) and isinstance(ctx.task, Classification)
    assert (ctx.learning_rate, ctx.epochs, ctx.batch_size, ctx.world_size, ctx.rank) == (1e-2, 1, 64, 1, 0)
    assert ctx.device == torch.device("cpu")


class MinimalStep:
    """Not a TrainingStep: only the two required methods (forward, autocast and end_epoch fall back to Loom's)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.calls = 0

    def configure_optimizers(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.5)  # an optimizer alone: no scheduler

    def step(self, model, inputs, target, optimizer):
        self.calls += 1
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(*inputs), target)
        loss.backward()
        optimizer.step()
        return loss  # not detached: the loop detaches it


def test_a_step_of_any_class_with_the_two_required_methods_works():
    out = fit_local({**CONFIG, "epochs": 2, "step": f"{HERE}:MinimalStep"}, _arrays(), device="cpu")
    assert out["step"].calls == out["optimizer_steps"] == 2 * math.ceil(3000 / 64)
    assert out["scheduler"] is None and out["history"][-1]["val_auc"] > 0.95


def test_regression_trains_and_its_rmse_falls():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    label = 50.0 + 10.0 * (x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] * x[:, 3]) + rng.normal(size=3000)
    task = Regression(mean=float(label[:2400].mean()), std=float(label[:2400].std()))
    y = ((label - task.mean) / task.std).astype(np.float32)
    arrays = {"x_train": x[:2400], "y_train": y[:2400], "x_val": x[2400:], "y_val": y[2400:]}
    config = {**CONFIG, "kwargs": {"in_features": 6, "out_features": 1, "hidden": [32], "dropout": 0.0},
              "task": task.to_dict(), "epochs": 6, "learning_rate": 3e-3}
    history = fit_local(config, arrays, device="cpu")["history"]
    rmse = [h["val_rmse"] for h in history]
    assert rmse[-1] < rmse[0] and rmse[-1] < 0.3 * label.std(), rmse  # in the label's units
    assert {"val_loss", "val_mae", "val_r2"} <= history[-1].keys() and history[-1]["val_r2"] > 0.9


class TwoInputs(torch.nn.Module):
    """A tabular matrix and an image: forward takes them as two arguments."""

    calls: list[tuple[tuple[int, ...], ...]] = []

    def __init__(self, in_features: int, out_features: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, kernel_size=5, stride=3)
        self.head = torch.nn.Linear(4 * 8 * 8 + in_features, out_features)

    def forward(self, tabular, image):
        TwoInputs.calls.append((tuple(tabular.shape), tuple(image.shape)))
        return self.head(torch.cat([torch.relu(self.conv(image)).flatten(1), tabular], dim=1))


def test_several_inputs_reach_forward_as_separate_arguments():
    rng = np.random.default_rng(3)
    n = 600
    tabular = rng.normal(size=(n, 3)).astype(np.float32)
    image = rng.normal(size=(n, 1, 28, 28)).astype(np.float32)
    y = ((image[:, 0, :14].mean(axis=(1, 2)) > 0) ^ (tabular[:, 0] > 1)).astype(np.int64)
    image[:, 0, :14] += np.where(y == 1, 0.5, -0.5)[:, None, None].astype(np.float32)
    arrays = {"x_train": [tabular[:500], image[:500]], "y_train": y[:500],
              "x_val": [tabular[500:], image[500:]], "y_val": y[500:]}
    config = {**CONFIG, "architecture": f"{HERE}:TwoInputs", "kwargs": {"in_features": 3}, "epochs": 3,
              "learning_rate": 3e-3}
    TwoInputs.calls.clear()
    history = fit_local(config, arrays, device="cpu")["history"]
    assert (64, 3) in {c[0] for c in TwoInputs.calls}
    assert {c for c in TwoInputs.calls if c[0][0] == 64} == {((64, 3), (64, 1, 28, 28))}
    assert ((100, 3), (100, 1, 28, 28)) in TwoInputs.calls  # validation, whole set
    assert history[-1]["val_accuracy"] > 0.8


# -- bad steps -----------------------------------------------------------------------------------------------------

NOT_CALLABLE = 3


def two_args(ctx, other):
    return TrainingStep(ctx)


def no_args():
    return None


class NoStep:
    def __init__(self, ctx):
        pass

    def configure_optimizers(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.1)


class WrongStep(NoStep):
    def step(self, model, batch):
        pass


@pytest.mark.parametrize("path, message", [
    ("runtime.steps.TrainingStep", r"training\.step 'runtime\.steps\.TrainingStep' must be an import path "
                                   r"'module:callable'"),
    ("no_such_module_for_loom:Step", r"training\.step 'no_such_module_for_loom:Step': cannot import module "
                                     r"'no_such_module_for_loom': ModuleNotFoundError"),
    (f"{HERE}:Missing", r"training\.step '.*:Missing': module '.*' has no attribute 'Missing'"),
    (f"{HERE}:NOT_CALLABLE", r"training\.step '.*:NOT_CALLABLE' is not callable \(it is a int\)"),
    (f"{HERE}:two_args", r"training\.step '.*:two_args' must take one argument \(the StepContext\); its "
                         r"parameters are \(ctx, other\)"),
    (f"{HERE}:no_args", r"training\.step '.*:no_args' must take one argument \(the StepContext\); its "
                        r"parameters are \(\)"),
    (f"{HERE}:NoStep", r"training\.step '.*:NoStep' returned a NoStep without a step\(model, inputs, target, "
                       r"optimizer\) method"),
    (f"{HERE}:WrongStep", r"training\.step '.*:WrongStep': WrongStep\.step must take \(model, inputs, target, "
                          r"optimizer\); its parameters are \(model, batch\)"),
])
def test_a_bad_step_is_a_config_error_naming_the_problem(path, message, monkeypatch):
    with pytest.raises(ConfigError, match=message):
        fit_local({**CONFIG, "step": path}, _arrays(), device="cpu")
    # run_training checks the step before any Ray work: with Ray made unimportable it still raises the same error.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=message):
        run_training({**CONFIG, "step": path}, _arrays(), workers=2, use_gpu="auto", storage_path=None,
                     run_name="never")


def test_load_step_defaults_to_loom_step_and_rejects_a_bad_option():
    assert load_step(None) is TrainingStep
    ctx = StepContext(task=Classification([0, 1]), learning_rate=0.1, epochs=1, batch_size=8, steps_per_epoch=1,
                      device=torch.device("cpu"), options={"clip_grad_norm": "big"})
    with pytest.raises(ConfigError, match=r"step_options\.clip_grad_norm must be a positive number, not 'big'"):
        make_step(None, ctx)


# -- checkpoints ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_pickle(monkeypatch):
    """torch.save / torch.load (pickle) fail if anything calls them."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint must never be pickled")

    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path, no_pickle):
    """Optimizer (momentum), scheduler, shuffle and the torch/numpy/random RNGs (dropout, the step's own draws)
    come back from a checkpoint of safetensors and JSON files only."""
    config = {**CONFIG, "kwargs": {**CONFIG["kwargs"], "dropout": 0.3}, "epochs": 4, "learning_rate": 0.1,
              "step": f"{HERE}:ScheduledSGD", "step_options": {"clip_grad_norm": 1.0}}
    straight = fit_local(config, _arrays(), device="cpu")
    first = fit_local({**config, "epochs": 2}, _arrays(), device="cpu", checkpoint_dir=tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "history.json", "model.safetensors", "training_state.json", "training_state.safetensors"]
    resumed = fit_local(config, _arrays(), device="cpu", resume_from=tmp_path / "ckpt")

    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["optimizer_steps"] == straight["optimizer_steps"] == 4 * math.ceil(3000 / 64)
    assert len(resumed["step"].draws) == len(first["step"].draws)  # only epochs 3 and 4 ran after the resume
    assert resumed["step"].draws == straight["step"].draws[len(first["step"].draws):]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    for k, v in straight["model"].state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[k], v), k
    a, b = straight["optimizer"].state_dict(), resumed["optimizer"].state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.5 ** 4)
    assert all(torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])
    assert straight["scheduler"].state_dict() == resumed["scheduler"].state_dict()


def test_adam_step_count_and_rng_state_round_trip(tmp_path, no_pickle):
    out = fit_local({**CONFIG, "epochs": 2}, _arrays(), device="cpu", checkpoint_dir=tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} == {".safetensors", ".json"}
    ckpt = load_checkpoint(tmp_path)
    steps = 2 * math.ceil(3000 / 64)
    assert ckpt["optimizer_steps"] == out["optimizer_steps"] == steps
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {steps}  # Adam's own count
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]  # a tuple, as JSON
    assert ckpt["scheduler"] is None and [h["epoch"] for h in ckpt["history"]] == [1, 2]
    assert set(ckpt["rng"]) == {"torch", "numpy", "python", "shuffle"}
    assert ckpt["rng"]["numpy"]["bit_generator"] == "MT19937"

    # Resuming restores Adam's state: its step count continues from there.
    resumed = fit_local({**CONFIG, "epochs": 3}, _arrays(), device="cpu", resume_from=tmp_path)
    assert {int(s["step"]) for s in resumed["optimizer"].state.values()} == {3 * math.ceil(3000 / 64)}


class _Warmup:
    """A callable LambdaLR factor whose state (its __dict__) holds a function: not JSON."""

    def __init__(self):
        self.curve = lambda epoch: 1.0

    def __call__(self, epoch):
        return self.curve(epoch)


def test_a_scheduler_state_that_is_not_json_fails_clearly(tmp_path, no_pickle):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _Warmup())
    with pytest.raises(LoomError, match=r"cannot checkpoint scheduler\.lr_lambdas\.0\.curve: it is a function.*"
                                        r"never pickles"):
        save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, generator=torch.Generator(),
                        history=[], optimizer_steps=0, device=torch.device("cpu"))
