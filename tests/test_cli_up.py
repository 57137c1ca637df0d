"""`loom up`, the README's main command, as a user runs it: a fresh process with its own embedded cluster, serving
until Ctrl-C, then stopping cleanly."""

from __future__ import annotations

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
    project = make_project(tmp_path / "qs", port=port, training={"epochs": 2})
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
    with pytest.raises(httpx.HTTPError):
        httpx.post(url, json=RECORD, timeout=5)
