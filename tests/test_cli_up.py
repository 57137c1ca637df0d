"""`loom up`, the README's main command, as a user runs it: a fresh process with its own embedded cluster, on a
project with no data yet (its `data.generate` makes it), serving until Ctrl-C, then stopping cleanly; and a second
run, which reuses the version the first one trained."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conftest import free_port, make_project

pytestmark = pytest.mark.slow

RECORD = [{"tenure_months": 3, "monthly_charges": 89.5, "total_charges": 268.5, "support_calls": 4,
           "paperless_billing": True, "contract": "month-to-month", "internet_service": "fiber",
           "payment_method": "electronic-check"}]


def test_loom_up_serves_until_ctrl_c_then_stops(tmp_path):
    port = free_port()
    project = make_project(tmp_path / "qs", port=port, generate=False, training={"epochs": 2})
    assert not (project / "data").exists()
    log = tmp_path / "up.log"
    # SIGINT restored to its default in the child: a shell's background job (CI) starts with it ignored.
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "up", str(project)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}/predict/churn"
    try:
        deadline = time.monotonic() + 420
        while True:
            assert proc.poll() is None, "loom up exited:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no prediction from loom up:\n" + log.read_text()[-3000:]
            try:
                if (httpx.post(url, json=RECORD, timeout=5).status_code == 200
                        and "Serving churn at" in log.read_text()):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # Ctrl-C once (after Ray Train has run in this process: it installs its own SIGINT handler).
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "Serving churn at" in out and "stopping" in out
    assert "making the data with generate_data.py" in out and (project / "data" / "customers.csv").is_file()
    assert "Token authentication is enabled" not in out  # Ray's start-up notice is not Loom's to print
    with pytest.raises(httpx.HTTPError):
        httpx.post(url, json=RECORD, timeout=5)

    # The same data, settings and code again: the version it has is served, nothing is trained or registered.
    again = subprocess.run([sys.executable, "-m", "runtime.cli", "up", "-p", str(project), "--detach"],
                           capture_output=True, text=True, timeout=420)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "churn v1 was trained on the same data, settings and" in again.stderr  # (rich wraps at 80 columns)
    assert "✓ train" not in again.stderr and "✓ register" not in again.stderr and "making the data" not in again.stderr
    assert again.stdout.strip().endswith(f"127.0.0.1:{port}")
    listed = subprocess.run([sys.executable, "-m", "runtime.cli", "models", "versions", "churn", "-p", str(project),
                             "--json"], capture_output=True, text=True, timeout=120)
    assert [v["version"] for v in json.loads(listed.stdout)] == [1], listed.stdout + listed.stderr
