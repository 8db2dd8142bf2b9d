"""Generates docs/cli.md from the click command tree, so the CLI reference never drifts from the code.

`python -m fleet.cli.docgen > docs/cli.md` writes it; tests/unit/test_cli_docs.py fails when it is stale. Hidden
(deprecated) commands are listed at the end without their options.
"""

from __future__ import annotations

import click

from fleet.cli.main import cli
from fleet.errors import EXIT_CODES


def _walk(cmd: click.Command, path: list[str], ctx: click.Context, out: list[str], hidden: list[str]) -> None:
    name = " ".join(path)
    if getattr(cmd, "hidden", False):
        hidden.append(name)
        return
    sub_ctx = click.Context(cmd, info_name=path[-1], parent=ctx)
    if path == ["fleet"]:
        sub_ctx = ctx
    else:
        out.append(f"## `{name}`\n")
        out.append("```text")
        cmd._help_option = None  # click caches it from the first context it saw (a test's may lack the -h alias)
        out.append(cmd.get_help(sub_ctx))
        out.append("```\n")
    if isinstance(cmd, click.Group):
        for sub_name in sorted(cmd.list_commands(sub_ctx)):
            sub = cmd.get_command(sub_ctx, sub_name)
            if sub is not None:
                _walk(sub, [*path, sub_name], sub_ctx, out, hidden)


def render() -> str:
    ctx = click.Context(cli, info_name="fleet", terminal_width=110, **cli.context_settings)
    out = ["# fleet command reference", "",
           "Generated from the code by `python -m fleet.cli.docgen > docs/cli.md`; every command also takes `--help`.", "",
           "```text", cli.get_help(ctx), "```", ""]
    hidden: list[str] = []
    _walk(cli, ["fleet"], ctx, out, hidden)
    out.append("## Exit codes\n")
    out.append("The same kind of outcome always ends with the same code, so that a CD pipeline can tell \"plan again\" "
               "from \"wait longer\" from \"someone else is applying\".\n")
    out.append("| code | meaning |")
    out.append("|---|---|")
    out += [f"| {code} | {meaning} |" for code, meaning in sorted(EXIT_CODES.items())]
    out.append("")
    if hidden:
        out.append("## Deprecated aliases (hidden)\n")
        out += [f"- `{h}`: still works and prints a deprecation notice on stderr" for h in hidden]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
