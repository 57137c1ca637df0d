"""Plugin packages installed with pip, as users install them: the third-party examples under examples/plugins, a
package made by ``loom plugin new``, and broken packages whose start-up errors must name the plugin, its
distribution and the hook.

Packages go into a throwaway virtual environment layered over this one (a ``.pth`` file adds this environment's
site-packages), so nothing is installed where the other tests run. ``--no-build-isolation`` builds them with the
setuptools already installed, offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, free_port, make_project

from runtime import hash_files

EXAMPLES = ROOT / "examples" / "plugins"
COPY_IGNORE = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")


@dataclass
class Env:
    """A virtual environment layered over the test run's own."""

    python: Path

    def run(self, *args: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("LOOM_", "PIP_", "PYTEST_")) and k != "PYTHONPATH"}
        clean.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", COLUMNS="500", **env)
        return subprocess.run([str(self.python), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                              env=clean, timeout=300)

    def pip_install(self, *packages: Path) -> None:
        out = self.run("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *packages)
        assert out.returncode == 0, out.stdout + out.stderr

    def loom(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "runtime.cli", *args, **env)


def overlay_env(path: Path) -> Env:
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # "import" lines of a .pth file run at start-up; addsitedir also runs the parent's .pth files (editable installs).
    Path(site, "_loom_parent.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    return Env(python)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example packages (copied: pip builds in the source tree) and one made by ``loom plugin new hello``."""
    src = tmp_path_factory.mktemp("packages")
    for name in ("loom-jsonl", "loom-webhook"):
        shutil.copytree(EXAMPLES / name, src / name, ignore=COPY_IGNORE)
    made = subprocess.run([sys.executable, "-m", "runtime.cli", "plugin", "new", "hello", "--dir", str(src)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    return {p.name: p for p in src.iterdir()}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, packages: dict[str, Path]) -> Env:
    env = overlay_env(tmp_path_factory.mktemp("venv"))
    env.pip_install(*packages.values())
    return env


def test_loom_plugin_new_writes_a_package(packages: dict[str, Path]) -> None:
    root = packages["loom-hello"]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "src/loom_hello/__init__.py", "tests/test_hello.py"]
    again = subprocess.run([sys.executable, "-m", "runtime.cli", "plugin", "new", "loom-hello", "--dir",
                            str(root.parent)], capture_output=True, text=True)
    assert again.returncode == 1 and "loom-hello already exists" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "runtime.cli", "plugin", "new", "../evil", "--dir", str(root.parent)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "plugin name '../evil'" in bad.stderr


def test_installed_packages_are_listed_with_their_distribution(env: Env) -> None:
    out = env.loom("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert {n: (rows[n]["dist"], rows[n]["version"]) for n in ("jsonl", "webhook", "hello")} == {
        "jsonl": ("loom-jsonl", "0.1.0"), "webhook": ("loom-webhook", "0.1.0"), "hello": ("loom-hello", "0.1.0")}
    assert rows["jsonl"]["provides"] == {"data_sources": ["jsonl", "ndjson"]}
    assert rows["webhook"]["hooks"] == ["loom_drift_detected"]
    assert rows["hello"]["hooks"] == ["loom_model_registered"]
    assert rows["files"]["dist"] == "loom-mlops"  # the built-ins still load beside them


@pytest.mark.parametrize("package", ["loom-jsonl", "loom-webhook", "loom-hello"])
def test_package_tests_pass_against_the_installed_package(env: Env, packages: dict[str, Path], package: str) -> None:
    """Each package's own tests, run from its directory with runtime.testing's fixtures (the pytest11 plugin)."""
    out = env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=packages[package])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


def test_jsonl_source_feeds_the_pipeline(env: Env, tmp_path: Path) -> None:
    """``loom validate`` on a project whose data is JSON Lines, read by the installed third-party plugin."""
    project = make_project(tmp_path / "project", port=free_port())
    csv = project / "data" / "customers.csv"
    jsonl = project / "data" / "customers.jsonl"
    rows = pd.read_csv(csv)
    rows.to_json(jsonl, orient="records", lines=True, date_format="iso")
    csv.unlink()
    cfg = yaml.safe_load((project / "loom.yaml").read_text())
    cfg["data"]["source"] = "jsonl://data/customers.jsonl"
    (project / "loom.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = env.loom("validate", project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rows):,} rows valid; fingerprint {hash_files([jsonl])}" in out.stdout


BROKEN = {
    "bad_signature": ("loom_model_registered", "@hookimpl\ndef loom_model_registered(project, versoin):\n    pass\n"),
    "unknown_hook": ("loom_model_retired", "@hookimpl\ndef loom_model_retired(model):\n    pass\n"),
    "unmarked": ("loom_model_deployed", "def loom_model_deployed(url):\n    pass\n"),
    "import_error": ("(import)", "import loom_no_such_module\n"),
}


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """An environment with one installed distribution, loom-broken, holding one broken plugin per entry point."""
    root = tmp_path_factory.mktemp("broken")
    entry_points = "".join(f'{name} = "loom_broken.{name}"\n' for name in BROKEN)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=70.1"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "loom-broken"\nversion = "0.1.0"\n\n'
        f"[project.entry-points.loom]\n{entry_points}"
    )
    package = root / "src" / "loom_broken"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, (_, body) in BROKEN.items():
        (package / f"{name}.py").write_text(f"from runtime import hookimpl\n\n\n{body}")
    env = overlay_env(tmp_path_factory.mktemp("broken-venv"))
    env.pip_install(root)
    return env


@pytest.mark.parametrize("plugin, fragment", [
    ("bad_signature", "Argument(s) {'versoin'} are declared in the hookimpl but can not be found in the hookspec "
                      "(the hook's parameters are: project, version)"),
    ("unknown_hook", "implements a hook that Loom"),
    ("unmarked", "is not marked with @runtime.hookimpl"),
    ("import_error", "ModuleNotFoundError: No module named 'loom_no_such_module'"),
])
def test_startup_errors_name_plugin_distribution_and_hook(broken_env: Env, plugin: str, fragment: str) -> None:
    out = broken_env.loom("plugins", LOOM_PLUGINS=plugin)
    assert out.returncode == 1
    text = " ".join((out.stdout + out.stderr).split())  # rich wraps long lines
    hook = BROKEN[plugin][0]
    assert f"error: plugin '{plugin}' (from loom-broken) failed in hook {hook}: {fragment}" in text
