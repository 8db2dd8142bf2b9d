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


JSON_CONVENTIONS = """## JSON output

The commands that print data take `--json`, the shorthand of `--format json` (where one is accepted, so is the
other). The same rules hold in every command's JSON:

- **Keys are snake_case**, the spelling of fleet.yaml (`max_concurrent_sessions`, `pool_max_disk_gb`, `last_seen`),
  in `fleet list`, `fleet show`, the `fleet hosts` commands, `fleet agent status`, the `fleet sessions` commands,
  `fleet submit`, the `fleet route` commands and `fleet keys list`. (The seed's camelCase names, such as
  maxConcurrentSessions, appear only in the prose of the docs.)
- **Times are ISO 8601 in UTC with their zone**: `2026-01-31T09:30:00.250Z` (milliseconds where fleet measured them,
  whole seconds where the record keeps whole seconds, e.g. `enrolled_at`); a time that has not happened is `null`.
  Durations are numbers of seconds in keys that end in `_s` (`uptime_s`, `last_seen_s_ago`, `timeout_s`).
- A session's times are `submitted_at`, `started_at`, `finished_at` and each history event's `at`.
- `fleet sessions logs --json` prints one object per line: `{"session", "text"}` for each piece of output as it
  arrives, then `{"session", "end", "phase", "exit_code"}`; `end` is true when the session is over.
- `fleet route show --json` and the items of `fleet route list --json` are the applied routing (`"source":
  "applied"`; `--from-file`: `"file"`) with `pending`: null, or `{"file", "changes": [{"attribute", "applied",
  "file"}]}`, what fleet.yaml would change at the next `fleet apply`.
- The plan's JSON (`fleet plan --format json`) has a format of its own, versioned: docs/plan-format.md.
"""


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
    out.append(JSON_CONVENTIONS)
    if hidden:
        out.append("## Deprecated aliases (hidden)\n")
        out += [f"- `{h}`: still works and prints a deprecation notice on stderr" for h in hidden]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
