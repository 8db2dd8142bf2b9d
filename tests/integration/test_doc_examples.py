"""Every example in README.md and in the commands' `--help` is run (or, where it cannot run, checked), as a new
user would run it: in a fresh directory, in bash, one line after the other, against the fleet the tour itself
starts with `fleet up` (on a free port: FLEET_NATS_URL, which `fleet up` and every command read).

Which bug makes it fail: an example that names an option fleet does not have (`--label model=…` where models are
`--model`), a file that does not exist (`python job.py`), a placeholder nobody can type (`<id>`), a line whose
comment promises output that it does not print (`fleet plan  # Plan: 17 to add…`), an order that cannot work
(revoking the only host before asking its agent for its status), a new example added without being run here.

How each kind of example is checked:
- the fenced `sh` blocks of the tour, Sessions and "Plans in pull requests": run line by line in bash, the
  environment carried from one line to the next (`. .venv/bin/activate`, `export`, `ID=$(…)`); a line's exit code
  and, where the README's comment or this test says so (EXPECT), what it prints. `fleet apply` asks for 'yes' on a
  terminal, so it runs on a pseudo-terminal that answers yes. After the agent is started in the background the
  test waits until it is active, as a user waits for it to show up in `fleet list`;
- the Python block: run with the environment the tour made (its comment names FLEET_NATS_CREDS);
- the `yaml` and `json` snippets: the modeline is put on fleet.yaml's first line and `fleet validate` still passes;
  the VS Code setting is valid JSON whose globs match fleet.yaml;
- the first block (`make demo`, `make test`): checked, not run: `make test` runs this very suite, and `make demo`
  is the tour's own steps for minutes (tests/integration/test_up_down.py runs the embedded fleet it starts);
- inline `fleet …` commands in README's prose and every `fleet …` command quoted in a `--help` text: parsed only
  (the command exists and takes every option named): they are references to a command inside a sentence, and
  several name a value to fill in (`fleet hosts rm ID`, `fleet server --nats URL`);
- an indented example line in a `--help` text (`fleet submit --project …`): run, on the live fleet.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from fleet.bus.embedded import free_port
from fleet.cli.docgen import render
from fleet.cli.main import cli
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.executable).parent.parent  # the .venv that runs the tests (the README activates it)


# ------------------------------------------------------------------------------------------- extraction


def blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced code block of a Markdown text: (language, body)."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def logical_lines(body: str) -> list[str]:
    """The commands of a shell block: `\\`-continued lines joined, comment-only and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def command_part(line: str) -> str:
    """The line without its trailing comment (a `#` after two spaces, outside quotes, as the README writes them)."""
    match = re.search(r"\s+#\s", line)
    return line[:match.start()].rstrip() if match else line


def inline_fleet_commands(text: str, *, markdown: bool = True) -> list[str]:
    """`fleet …` inside backticks in prose (whitespace collapsed): references to a command with arguments. In
    Markdown the fenced blocks are not prose; help texts (`markdown=False`) are prose throughout."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S) if markdown else text
    spans = {" ".join(m.group(1).split()) for m in re.finditer(r"`([^`]+)`", prose)}
    return sorted(s for s in spans if re.match(r"^(\S+=\S+ )*fleet [a-z]", s) and " " in s.split("fleet ", 1)[1])


def help_texts() -> str:
    """Every command's --help, as docs/cli.md shows it (fleet.cli.docgen)."""
    return render().replace("```text", "").replace("```", "")  # the help texts, without docs/cli.md's fences


def help_examples(text: str) -> list[str]:
    """Indented example lines of the --help texts (a line of its own that starts with `fleet `)."""
    return sorted({line.strip() for line in text.splitlines() if re.match(r"^ {6,}fleet [a-z]", line)})


# ------------------------------------------------------------------------------------------- parse-only check


def check_parses(example: str) -> None:
    """The command of `example` exists and takes every option it names (values are not checked: they are
    placeholders, or name files of the reader's)."""
    words = example.split()
    words = words[words.index("fleet") + 1:]
    cmd: click.Command = cli
    ctx = click.Context(cli)
    while isinstance(cmd, click.Group) and words and not words[0].startswith("-"):
        sub = cmd.get_command(ctx, words[0])
        if sub is None:
            break
        cmd, words = sub, words[1:]
        ctx = click.Context(cmd)
    assert not isinstance(cmd, click.Group) or not words, f"{example!r}: no such command"
    opts = {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and word not in ("-", "|"):
            name = word.split("=", 1)[0]
            assert name in opts | {"--help", "-h"}, f"{example!r}: {cmd.name} has no option {name}"


# ------------------------------------------------------------------------------------------- the shell


@dataclass
class Expect:
    rc: tuple[int, ...] = (0,)
    out: tuple[str, ...] = ()  # each must be in stdout
    tty: bool = False  # run on a pseudo-terminal that answers the confirmation with yes
    then: str | None = None  # what the user waits for afterwards ("agent-active")


@dataclass
class Shell:
    cwd: Path
    env: dict[str, str]
    ran: list[str] = field(default_factory=list)
    n: int = 0

    def run(self, line: str, expect: Expect, timeout: float = 90) -> str:
        self.n += 1
        out, err, env_file = (self.cwd / f".t{self.n}.{k}" for k in ("out", "err", "env"))
        # `set -a`: a variable the line sets (ID=…) is exported, so that the next line's bash has it, as the
        # user's one interactive shell would
        script = f"set -a\n{line}\n__rc=$?\nenv -0 > {env_file}\nexit $__rc\n"
        master = slave = None
        if expect.tty:
            master, slave = pty.openpty()
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(["bash", "-c", script], cwd=self.cwd, env=self.env, stdout=o, stderr=e,
                                    stdin=slave if slave is not None else subprocess.DEVNULL, start_new_session=True)
            if master is not None:
                os.write(master, b"yes\n")
            try:
                rc = proc.wait(timeout)
            finally:
                for fd in (master, slave):
                    if fd is not None:
                        os.close(fd)
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        assert rc in expect.rc, f"{line!r} exited {rc} (expected {expect.rc}):\n{stdout[-3000:]}\n{stderr[-3000:]}"
        for words in expect.out:
            assert words in stdout, f"{line!r} did not print {words!r}:\n{stdout[-3000:]}\n{stderr[-2000:]}"
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr
        if env_file.exists():
            self.env = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        self.ran.append(line)
        if expect.then == "agent-active":
            wait_for(lambda: '"status": "active"' in self.capture("fleet list --json"), 60, 0.2, "the agent")
        return stdout

    def capture(self, line: str) -> str:
        return subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL).stdout


#: what a line must do beyond exiting 0 (by its command, in the order the lines come; the last one repeats)
EXPECT: dict[str, list[Expect]] = {
    "fleet validate": [Expect(out=("fleet.yaml: valid",))],
    "fleet plan": [Expect(out=("Plan: 17 to add, 0 to change, 0 to destroy.",))],  # what its comment says
    "fleet apply": [Expect(tty=True, out=("Apply complete! Resources: 17 added",))],
    'FLEET_ENROLL_KEY="$FLEET_KEY_LOCAL_DEV" fleet agent run --pool pool-local-main --state-dir .fleet/agents/tour-1 &':
        [Expect(then="agent-active")],
    "fleet list": [Expect(out=("ID", "HOSTNAME", "STATUS", "POOLS", "SESSIONS", "LAST SEEN", "pool-local-main"))],
    'fleet show "$ID"': [Expect(out=("Status:", "active"))],
    'fleet hosts pause "$ID"': [Expect(out=("is now paused",))],
    'fleet hosts resume "$ID"': [Expect(out=("is now active",))],
    "fleet agent status --state-dir .fleet/agents/tour-1": [Expect(out=("Status:", "active"))],
    "fleet route show my-fintech-app": [Expect(out=("Preferred pool:   pool-local-main",)),
                                        Expect(out=("Pending:          fleet.yaml differs: preferred_pool "
                                                    "pool-local-main → pool-cloud-e2b",))],
    "fleet route test my-fintech-app --explain": [Expect(out=("slots used]  → AVAILABLE", "Decision:        route to",
                                                              "Hosts:"))],
    "fleet route set my-fintech-app --preferred-pool pool-cloud-e2b --fallback-pool pool-local-main":
        [Expect(out=("Updated fleet.yaml",))],
    "fleet plan --format markdown": [Expect(out=("#### project `my-fintech-app`", "route.my-fintech-app"))],
    'fleet hosts drain "$ID"': [Expect(out=("is now draining",))],
    'fleet hosts revoke "$ID"': [Expect(out=("is now revoked",))],
    'fleet hosts rm "$ID"': [Expect(out=("removed host",))],
    # Sessions
    "fleet submit -p my-fintech-app --wait -- sh -c 'echo hello; exit 3'": [Expect(rc=(3,), out=("hello",))],
    'fleet sessions show "$S"': [Expect(out=("Command:", "sh -c echo working; sleep 60"))],
    'fleet sessions cancel "$S"': [Expect(out=("cancelled (SIGTERM)",))],
    # Plans in pull requests: there is nothing to change by then (0), or the README's own edits (2)
    "fleet plan --detailed-exitcode": [Expect(rc=(0, 2))],
    "fleet plan --out plan.json && fleet apply plan.json": [Expect(tty=True)],
}


def expect_for(line: str, seen: dict[str, int]) -> Expect:
    key = command_part(line)
    options = EXPECT.get(key)
    if not options:
        return Expect()
    i = seen.get(key, 0)
    seen[key] = i + 1
    return options[min(i, len(options) - 1)]


def readme_shell_blocks() -> list[list[str]]:
    return [logical_lines(body) for lang, body in blocks(README.read_text()) if lang == "sh"]


# ------------------------------------------------------------------------------------------- the tests


def test_the_extraction_finds_the_examples() -> None:
    """The helpers find what they are meant to (or the test below would pass by running nothing)."""
    sh = readme_shell_blocks()
    assert len(sh) == 4, [b[:1] for b in sh]
    assert [command_part(line) for line in sh[0]] == ["make demo", "make test"]
    assert "fleet up" in [command_part(line) for line in sh[1]]
    assert any(line.startswith("fleet submit --project") for line in sh[2])
    assert command_part("fleet plan   # Plan: 17 to add") == "fleet plan"
    assert command_part("fleet submit -- sh -c 'echo #1'") == "fleet submit -- sh -c 'echo #1'"
    assert any(lang == "python" for lang, _ in blocks(README.read_text()))
    assert "fleet up --nats nats://127.0.0.1:4223" in inline_fleet_commands(README.read_text())
    assert help_examples(help_texts()) == [
        "fleet submit --project my-fintech-app --model claude-3-5-sonnet -- python3 -c 'print(\"hello\")'"]
    with pytest.raises(AssertionError, match="has no option --label-x"):
        check_parses("fleet submit --label-x a -- true")
    with pytest.raises(AssertionError, match="no such command"):
        check_parses("fleet hosts frobnicate X")


def test_every_inline_command_of_the_readme_and_the_help_texts_parses() -> None:
    """Parse-only (they name values to fill in, inside sentences): the command exists, every option it names too."""
    quoted = inline_fleet_commands(README.read_text()) + inline_fleet_commands(help_texts(), markdown=False)
    assert len(quoted) >= 10, quoted
    for example in quoted:
        check_parses(example)


def test_the_make_targets_the_readme_names_exist() -> None:
    """`make demo` and `make test` are not run here: `make test` runs this suite, `make demo` runs the tour's steps
    for minutes. They exist, and `make -n` (a dry run) accepts them."""
    for line in readme_shell_blocks()[0]:
        target = command_part(line).split()[1]
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, (target, dry.stderr)


def test_the_readme_tour_sessions_python_and_plans_run_as_written(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(ROOT / "fleet.yaml.example", work / "fleet.yaml.example")
    (work / ".venv").symlink_to(VENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k not in ("CI", "VIRTUAL_ENV")}
    env.update({"FLEET_NATS_URL": f"nats://127.0.0.1:{free_port()}", "HOME": str(tmp_path), "NO_COLOR": "1",
                "PATH": "/usr/local/bin:/usr/bin:/bin", "FLEET_NATS_SERVER": os.environ.get("FLEET_NATS_SERVER", "")})
    if not env["FLEET_NATS_SERVER"]:
        del env["FLEET_NATS_SERVER"]
    shell = Shell(work, env)
    seen: dict[str, int] = {}
    _, tour, sessions, plans = readme_shell_blocks()
    try:
        # the tour, from activating the venv to `fleet down`
        for line in tour:
            shell.run(line, expect_for(line, seen))
        assert shell.ran == tour
        assert (work / "fleet.schema.json").stat().st_size > 1000
        assert not (work / ".fleet" / "nats.pid").exists() or "fleet down" in shell.ran

        # the snippets for editors: the modeline keeps fleet.yaml valid; the VS Code setting is JSON for fleet.yaml
        snippets = dict(blocks(README.read_text()))
        (work / "fleet.yaml").write_text(snippets["yaml"] + (work / "fleet.yaml").read_text())
        shell.run("fleet validate", Expect(out=("fleet.yaml: valid",)))
        setting = json.loads("{" + snippets["json"] + "}")
        assert "fleet.yaml" in next(iter(setting["yaml.schemas"].values()))

        # Sessions run on a running fleet: the tour's first steps again (it ended with `fleet down`), without
        # the edit of `route set`, and an agent of a new state dir (the tour's host was revoked and forgotten)
        shutil.copy(ROOT / "fleet.yaml.example", work / "fleet.yaml")
        for line in ("fleet up", "fleet apply --auto-approve",
                     'FLEET_ENROLL_KEY="$FLEET_KEY_LOCAL_DEV" fleet agent run --pool pool-local-main '
                     "--state-dir .fleet/agents/tour-2 &"):
            shell.run(line, Expect(then="agent-active") if line.endswith("&") else Expect())
        for line in sessions:
            out = shell.run(line, expect_for(line, seen))
            if line.startswith("fleet submit --project"):
                sid = out.strip()
                assert re.fullmatch(r"[0-9a-f]{20}", sid), out
                done = wait_for(lambda sid=sid: (d := json.loads(shell.capture(f"fleet sessions show {sid} --json")))
                                ["phase"] in ("succeeded", "failed") and d, 60, 0.2, "the first session")
                assert (done["phase"], done["output_tail"]) == ("succeeded", "hello\n"), done
            if line.startswith("S="):
                assert re.fullmatch(r"[0-9a-f]{20}", shell.env["S"])
            if line.startswith("fleet sessions list"):
                assert shell.env["S"] in out
        assert shell.ran[-len(sessions):] == sessions

        # the Python example, as its comment says: FLEET_NATS_URL and FLEET_NATS_CREDS
        code = snippets["python"]
        run = subprocess.run(["python3", "-c", code], cwd=work, capture_output=True, text=True, timeout=90,
                             env={**shell.env, "FLEET_NATS_CREDS": ".fleet/trust/admin.creds"})
        assert run.returncode == 0 and run.stdout == "succeeded\n", run.stdout + run.stderr

        # the --help examples: run on the same fleet
        for example in help_examples(help_texts()):
            out = shell.run(example, Expect())
            assert re.fullmatch(r"[0-9a-f]{20}\n", out), out
        jq = "fleet list --json | jq '[.[] | select(.status == \"active\")]'"
        assert jq in inline_fleet_commands(help_texts(), markdown=False)  # the one in `fleet list --help`, run as well
        assert len(json.loads(shell.run(jq, Expect()))) == 1

        # Plans in pull requests
        for line in plans:
            shell.run(line, expect_for(line, seen))
        assert (work / "plan.md").read_text().startswith("## fleet plan")
        assert json.loads((work / "plan.json").read_text())["format_version"]
    finally:
        subprocess.run(["bash", "-c", "fleet down"], cwd=work, env=shell.env, capture_output=True, timeout=60)
