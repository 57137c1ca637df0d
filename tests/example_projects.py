"""Shared by the example tests: an example copied into a temporary directory with the session's serving port,
and a tritonclient client."""

from __future__ import annotations

from pathlib import Path

from conftest import make_project

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def copy_example(name: str, dest: Path, port: int, **overrides) -> Path:
    """``examples/<name>`` in ``dest``, without its data (``data.generate`` makes it)."""
    return make_project(dest / name, port=port, generate=False, source=EXAMPLES / name, **overrides)


def triton(url: str):
    """tritonclient's HTTP module and a client of ``url``."""
    import tritonclient.http as tc

    return tc, tc.InferenceServerClient(url=url.removeprefix("http://"))
