"""Helpers shared by the CLI commands: loading the config with diagnostics printed, the plugin registry.

Called by fleet.cli.*_cmds modules only.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from fleet.plugins.registry import Registry, load_registry
from fleet.schema.api import LoadResult, load_fleet


@functools.cache
def plugin_registry() -> Registry:
    reg = load_registry()
    for warning in reg.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return reg


def print_diagnostics(result: LoadResult) -> None:
    """Every diagnostic on stderr, errors red, warnings yellow, then a count line."""
    for d in result.diagnostics:
        first, *rest = d.format().split("\n")
        click.secho(first, fg="red" if d.severity == "error" else "yellow", err=True)
        for line in rest:
            click.echo(line, err=True)
    if result.errors:
        n, w = len(result.errors), len(result.warnings)
        click.echo(f"{n} error{'s' if n != 1 else ''}" + (f", {w} warning{'s' if w != 1 else ''}" if w else ""), err=True)


def load_config_or_report(file: Path, *, report: bool = True, exit_on_error: bool = True, strict: bool = False) -> LoadResult:
    """Load fleet.yaml; print its diagnostics on stderr (unless the caller reports them itself, as
    `fleet validate --format json` does); exit 1 on errors when exit_on_error."""
    result = load_fleet(file, backends=plugin_registry().settings_validators())
    if report:
        print_diagnostics(result)
    if exit_on_error and (not result.ok or (strict and result.warnings)):
        sys.exit(1)
    return result
