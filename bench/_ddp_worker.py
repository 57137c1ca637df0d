"""torchrun worker for bench_training.py: plain PyTorch DDP over gloo running Loom's own per-worker step."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from runtime.training import build_model, evaluate, train_epoch


def main(data_path: str, config_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = json.loads(open(config_path).read())
    arrays = dict(np.load(data_path))
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    model = DistributedDataParallel(build_model(config))
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    gen = torch.Generator().manual_seed(config["seed"])
    epochs, ends = [], []
    for _ in range(config["epochs"]):
        started = time.perf_counter()
        train_epoch(model, opt, t["x_train"], t["y_train"], batch_size=config["batch_size"], generator=gen,
                    rank=rank, world_size=world)
        evaluate(model, t["x_val"], t["y_val"])
        epochs.append(time.perf_counter() - started)
        ends.append(time.time())
    if rank == 0:
        print("EPOCHS " + json.dumps({"epochs": epochs, "ends": ends}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
