"""Drift notifications to a webhook: a ``loom_drift_detected`` hook that POSTs JSON.

Configured by environment variables, because a webhook URL is a secret and the hook runs in the serving
replicas: ``LOOM_WEBHOOK_URL`` (http or https; unset, the plugin does nothing) and ``LOOM_WEBHOOK_TIMEOUT``
(seconds per POST, default 5). A failed delivery is logged and never fails the drift check that found the drift.

Like any third-party plugin, it imports only from Loom's public API (``runtime``).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from runtime import DriftReport, Project, hookimpl

__version__ = "0.1.0"

log = logging.getLogger(__name__)


def message(project: Project, model: str, version: int, report: DriftReport) -> dict[str, Any]:
    """The JSON body: a one-line ``text`` (what Slack and Mattermost display) plus the full report."""
    drifted = [f.column for f in report.features if f.drifted]
    text = (f"Drift in {model} v{version} ({project.config.name}): {report.share_drifted:.0%} of columns drifted "
            f"({', '.join(drifted) or 'none individually'}), {report.n_current} served rows vs "
            f"{report.n_reference} reference rows, checked by {report.monitor}.")
    return {"text": text, "event": "loom.drift_detected", "project": project.config.name, "model": model,
            "version": version, "report": report.to_dict()}


def _where(url: str) -> str:
    """The URL without user info, path or query, which often carry the webhook's secret."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def post(url: str, body: dict[str, Any], *, timeout: float) -> None:
    """POST ``body`` as JSON to ``url``; log, never raise, when it cannot be delivered."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        log.error("LOOM_WEBHOOK_URL must be an http:// or https:// URL; not sending the drift notification")
        return
    request = urllib.request.Request(
        url, data=json.dumps(body, default=str).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"loom-webhook/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as err:
        log.warning("drift notification to %s was refused: HTTP %d %s", _where(url), err.code, err.reason)
    except (urllib.error.URLError, OSError) as err:
        log.warning("drift notification to %s failed: %s", _where(url), getattr(err, "reason", err))


@hookimpl
def loom_drift_detected(project: Project, model: str, version: int, report: DriftReport) -> None:
    """Send the drift report to ``LOOM_WEBHOOK_URL``; never asks for a retrain."""
    url = os.environ.get("LOOM_WEBHOOK_URL")
    if not url:
        return
    try:
        timeout = float(os.environ.get("LOOM_WEBHOOK_TIMEOUT", "5"))
    except ValueError:
        timeout = 5.0
        log.warning("LOOM_WEBHOOK_TIMEOUT is not a number of seconds; using %.0f", timeout)
    post(url, message(project, model, version, report), timeout=timeout)
