"""A Prometheus setup for a running stack: file_sd target files and a ready ``prometheus.yml``.

``meshscope up`` writes them into ``DATA/prometheus/``: ``relays.json`` and
``dashboard.json`` (the file_sd format: targets and their labels, read again
by Prometheus whenever they change) and ``prometheus.yml``, which scrapes both
over TLS with the CA of the stack and a token of the ``prometheus``
principal, and loads the alert rules shipped in ``deploy/`` when they are
there. ``prometheus --config.file=DATA/prometheus/prometheus.yml`` is then
all it takes. Every series a relay exports carries its ``region`` already,
so the targets add only ``relay`` (and the dashboard ``service``).

YAML is written by hand (strings as JSON strings, which YAML reads the same),
so this needs no YAML library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELAYS_JOB = "meshscope-relays"
DASHBOARD_JOB = "meshscope-dashboard"
RULES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-rules.yml"
"""The alert rules, in a source checkout (an editable install); absent from a wheel."""


@dataclass(frozen=True)
class PromTargets:
    """Where a stack's metrics are and how to reach them."""

    relays: dict[str, int]  # region -> port
    dashboard_port: int
    host: str = "127.0.0.1"
    tls_ca: str | None = None  # None: plain HTTP
    token_file: str = ""
    scrape_interval_s: float = 15.0
    evaluation_interval_s: float = 15.0
    rule_files: tuple[str, ...] = ()


def relay_targets(t: PromTargets) -> list[dict[str, Any]]:
    """file_sd entries of the relays: one per relay, labelled with its name."""
    return [
        {"targets": [f"{t.host}:{port}"], "labels": {"relay": f"relay-{region}"}}
        for region, port in sorted(t.relays.items())
    ]


def dashboard_targets(t: PromTargets) -> list[dict[str, Any]]:
    """file_sd entry of the dashboard (its own series and those of the collector inside it)."""
    return [{"targets": [f"{t.host}:{t.dashboard_port}"], "labels": {"service": "dashboard"}}]


def _s(value: str) -> str:
    return json.dumps(value)


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def prometheus_yml(t: PromTargets, target_dir: Path) -> str:
    """The configuration: two jobs over file_sd, TLS with the stack's CA, the token as a credentials file."""
    lines = [
        "# Made by meshscope up: prometheus --config.file=<this file>",
        "global:",
        f"  scrape_interval: {_duration(t.scrape_interval_s)}",
        f"  evaluation_interval: {_duration(t.evaluation_interval_s)}",
    ]
    if t.rule_files:
        lines.append("rule_files:")
        lines += [f"  - {_s(path)}" for path in t.rule_files]
    lines.append("scrape_configs:")
    for job, file in ((RELAYS_JOB, "relays.json"), (DASHBOARD_JOB, "dashboard.json")):
        lines += [
            f"  - job_name: {job}",
            f"    scheme: {'https' if t.tls_ca else 'http'}",
            "    authorization:",
            "      type: Bearer",
            f"      credentials_file: {_s(t.token_file)}",
        ]
        if t.tls_ca:
            lines += ["    tls_config:", f"      ca_file: {_s(t.tls_ca)}"]
        lines += [
            "    file_sd_configs:",
            f"      - files: [{_s(str(target_dir / file))}]",
            f"        refresh_interval: {_duration(max(t.scrape_interval_s, 1.0))}",
        ]
    return "\n".join(lines) + "\n"


def write(directory: Path, t: PromTargets) -> Path:
    """Write the target files and ``prometheus.yml`` into ``directory``; returns the configuration's path."""
    directory.mkdir(parents=True, exist_ok=True)
    _replace(directory / "relays.json", json.dumps(relay_targets(t), indent=2) + "\n")
    _replace(directory / "dashboard.json", json.dumps(dashboard_targets(t), indent=2) + "\n")
    config = directory / "prometheus.yml"
    _replace(config, prometheus_yml(t, directory))
    return config


def _replace(path: Path, text: str) -> None:
    """Write whole or not at all: Prometheus re-reads file_sd files when they change."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
