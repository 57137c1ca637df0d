"""Generate the image example's synthetic pictures: 28x28 grey-scale images of one of four shapes (a disc, a
square, a cross or a ring) at a random position and size, on a noisy background, with their shape as the label.
Nothing is downloaded. The images go into a Parquet file as a list column ``image`` of 784 floats per row (declared
``type: tensor, shape: [1, 28, 28]`` in ``loom.yaml``), next to an id, a time and the label.

``drift > 0`` simulates changed traffic: brighter, noisier pictures. The same arguments always give the same rows.
Usage: ``python generate_data.py [--out data/shapes.parquet] [--rows N] [--seed S] [--drift X]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SHAPES = ("disc", "square", "cross", "ring")
SIZE = 28
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "shapes.parquet"


def draw(shape: str, rng: np.random.Generator, drift: float = 0.0) -> np.ndarray:
    """One ``[1, 28, 28]`` float32 image of ``shape``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    r = rng.uniform(5, 9)
    cy, cx = rng.uniform(r + 1, SIZE - r - 1, 2)
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        mask = dy ** 2 + dx ** 2 <= r ** 2
    elif shape == "square":
        mask = (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    elif shape == "cross":
        mask = ((np.abs(dy) <= r * 0.25) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.25) & (np.abs(dy) <= r))
    else:
        d = np.sqrt(dy ** 2 + dx ** 2)
        mask = (d <= r) & (d >= r * 0.6)
    image = mask.astype(np.float32) * rng.uniform(0.6, 1.0) + 0.1 * drift
    image += rng.normal(0, 0.15 + 0.1 * drift, image.shape).astype(np.float32)
    return np.clip(image, 0, 1.5).astype(np.float32)[None]


def generate(rows: int = 3000, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(SHAPES, rows)
    images = [draw(s, rng, drift) for s in labels]
    taken = np.datetime64("2025-01-01T00:00:00", "s") + np.sort(rng.integers(0, 365 * 24 * 3600, rows)).astype(
        "timedelta64[s]")
    return pd.DataFrame({"image_id": np.arange(1, rows + 1), "taken_at": pd.to_datetime(taken),
                         "image": [im.ravel() for im in images], "shape": labels})


def write(frame: pd.DataFrame, out: Path) -> None:
    """Parquet with ``image`` as a fixed-size list of 784 float32 values."""
    image = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(frame["image"].to_list()), pa.float32()),
                                              SIZE * SIZE)
    table = pa.table({"image_id": frame["image_id"], "taken_at": frame["taken_at"], "image": image,
                      "shape": frame["shape"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the image example's synthetic shapes.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output Parquet (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=3000, help="images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--drift", type=float, default=0.0, help="brightness/noise shift, 0 = none (default: 0)")
    args = parser.parse_args()
    write(generate(args.rows, args.seed, args.drift), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
