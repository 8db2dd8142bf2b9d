"""Shared click options, so that every command spells them the same way.

Used by every module of fleet.cli: `-f/--file` (FLEET_FILE), `--nats` (FLEET_NATS_URL) with `--creds`
(FLEET_NATS_CREDS) and `--connect-timeout`, `--state-dir` (FLEET_STATE_DIR), and `--json` / `--format`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_FILE = "fleet.yaml"
DEFAULT_STATE_DIR = ".fleet"


@dataclass(frozen=True)
class NatsSettings:
    """Where and how to reach NATS; passed to fleet.bus.connect by commands."""

    url: str
    creds: str | None
    connect_timeout: float


def file_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`-f/--file FILE`: the fleet.yaml to read (default fleet.yaml, env FLEET_FILE)."""
    return click.option(
        "-f",
        "--file",
        "file",
        type=click.Path(path_type=Path, dir_okay=True),
        default=DEFAULT_FILE,
        envvar="FLEET_FILE",
        show_default=True,
        show_envvar=True,
        help="The fleet.yaml to read.",
    )(func)


def nats_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--nats URL`, `--creds FILE`, `--connect-timeout S`; the command receives one `nats: NatsSettings`."""

    @click.option(
        "--nats",
        "nats_url",
        default=DEFAULT_NATS_URL,
        envvar="FLEET_NATS_URL",
        show_default=True,
        show_envvar=True,
        help="NATS server URL of the control plane (comma-separate several for a cluster).",
    )
    @click.option(
        "--creds",
        "nats_creds",
        type=click.Path(exists=True, dir_okay=False),
        envvar="FLEET_NATS_CREDS",
        show_envvar=True,
        default=None,
        help="NATS credentials file (JWT + NKey seed).",
    )
    @click.option(
        "--connect-timeout",
        "nats_timeout",
        type=click.FloatRange(min=0.1),
        default=3.0,
        envvar="FLEET_NATS_TIMEOUT",
        show_default=True,
        help="Seconds to wait for the NATS server before giving up.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, nats_url: str, nats_creds: str | None, nats_timeout: float, **kwargs: Any) -> Any:
        return func(*args, nats=NatsSettings(nats_url, nats_creds, nats_timeout), **kwargs)

    return wrapper


def state_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--state-dir DIR`: where the embedded fleet keeps its data and PID files (env FLEET_STATE_DIR)."""
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_STATE_DIR,
        envvar="FLEET_STATE_DIR",
        show_default=True,
        show_envvar=True,
        help="State directory of the embedded fleet.",
    )(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: machine-readable output instead of the table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def format_option(*choices: str, default: str = "human") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format CHOICE` (plus `--json` as a shorthand for `--format json`); the command receives `fmt`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            default=default,
            show_default=True,
            help="Output format.",
        )
        @click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
        @functools.wraps(func)
        def wrapper(*args: Any, fmt: str, as_json: bool, **kwargs: Any) -> Any:
            return func(*args, fmt="json" if as_json else fmt, **kwargs)

        return wrapper

    return decorate


DEFAULT_AGENT_STATE_DIR = "~/.local/state/fleet-agent"


def agent_state_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--state-dir DIR` of a worker agent (env FLEET_AGENT_STATE_DIR): identity, credential, sockets, log."""
    return click.option(
        "--state-dir",
        "agent_state_dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_AGENT_STATE_DIR,
        envvar="FLEET_AGENT_STATE_DIR",
        show_default=True,
        show_envvar=True,
        help="State directory of the agent (identity, credential, control and credential sockets, log).",
    )(func)
