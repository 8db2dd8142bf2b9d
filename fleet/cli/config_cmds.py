"""`fleet validate` and `fleet schema`: the desired-state commands that need no running fleet.

validate: load + schema + references + backend settings, every problem at once as `FILE:LINE:COL: error: …`
(or `--format json`, or CI annotations: `--format github` workflow commands, `--format gitlab` a Code Quality
report, fleet.cli.annotations); exit 0 valid, 1 invalid, 64 usage. schema: print the JSON Schema composed with the
installed backends' settings fragments. Listed in fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fleet.cli.options import STDOUT, OutputFile, file_option, format_option
from fleet.cli.shared import atomic_write, load_config_or_report, plugin_registry
from fleet.schema.validation import base_schema, compose_schema


@click.command("validate")
@file_option
@format_option("human", "json", "github", "gitlab")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the file is valid.")
def validate_cmd(file: Path, fmt: str, strict: bool, quiet: bool) -> None:
    """Check a fleet.yaml: schema, references, tenant boundaries, backend settings.

    Every problem is reported at once as FILE:LINE:COL: error: MESSAGE (at JSON.PATH). Exit status: 0 valid,
    1 invalid, 64 usage error. In CI, --format github prints GitHub workflow commands (each problem an annotation
    on its line of the pull request) and --format gitlab a Code Quality report (JSON, for
    artifacts:reports:codequality; the problems also go to stderr); --format json is for other tools.
    """
    result = load_config_or_report(file, report=fmt in ("human", "gitlab"), exit_on_error=False, strict=strict)
    failed = not result.ok or (strict and result.warnings)
    if fmt in ("github", "gitlab"):
        from fleet.cli.annotations import github_commands, gitlab_report, repo_root

        root = repo_root(os.environ, fmt)
        if fmt == "github":
            for line in github_commands(result.diagnostics, root):
                click.echo(line)
        else:
            click.echo(json.dumps(gitlab_report(result.diagnostics, root), indent=2))
    elif fmt == "json":
        payload = {
            "file": str(file),
            "valid": not failed,
            "errors": len(result.errors),
            "warnings": len(result.warnings),
            "diagnostics": [d.to_json() for d in result.diagnostics],
        }
        click.echo(json.dumps(payload, indent=2))
    elif not failed and not quiet:
        cfg = result.config
        assert cfg is not None
        click.secho(f"{file}: valid", fg="green", bold=True, nl=False)
        click.echo(
            f" — org {cfg.org.id}: {len(cfg.tenants)} tenants, {len(cfg.projects)} projects, "
            f"{len(cfg.pools)} pools, {len(cfg.keys)} keys"
            + (f"; {len(result.warnings)} warning(s)" if result.warnings else "")
        )
    sys.exit(1 if failed else 0)


@click.command("schema")
@click.option("--base", is_flag=True, help="Print the checked-in schema without the backends' settings fragments.")
@click.option("-o", "--output", type=OutputFile(stdout=True), help="Write to a file instead of stdout (- for stdout).")
def schema_cmd(base: bool, output: Path | None) -> None:
    """Print the JSON Schema of fleet.yaml (draft 2020-12).

    Point your editor at it, e.g. with the YAML language server, put this first line in fleet.yaml:

        # yaml-language-server: $schema=./fleet.schema.json

    after `fleet schema -o fleet.schema.json`.
    """
    schema = base_schema() if base else compose_schema(plugin_registry().settings_schemas())
    text = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    if output is not None and output != STDOUT:
        atomic_write(output, text, mode=None if output.exists() else 0o644)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
