"""`fleet plan`, `fleet apply` and `fleet force-unlock`: the reconciler's commands.

plan: load fleet.yaml, compute the Plan against the live fleet (fleet.reconciler.operation.make_live_plan),
render it (human / --summary / json / markdown), optionally save it (--out) and exit with --detailed-exitcode
semantics. apply: the use-case is fleet.reconciler.operation.apply; this module is its view (`CliApplyView`):
the plan and the progress on the terminal, the confirmation prompt (CI needs --auto-approve), generated key
secrets shown once (or written to --reveal-keys-to), the wait for convergence. Ctrl-C, SIGTERM and SIGHUP
release the apply lock before the command exits (fleet.cli.shared.run_async). Listed in fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import click

from fleet.bus.applied import ApplyLock, LockInfo
from fleet.bus.connection import Bus, connect
from fleet.cli.options import LOCK_ID, InputFile, NatsSettings, OutputFile, Seconds, file_option, nats_options
from fleet.cli.shared import atomic_write, cyclic_gc_paused, load_config_or_report, read_bounded, run_async
from fleet.errors import EXIT_CHANGES, FleetError, UsageError
from fleet.reconciler.apply import ApplyReport
from fleet.reconciler.operation import ApplyRequest, apply, make_live_plan
from fleet.reconciler.plan import Change, Plan
from fleet.reconciler.rendering import render_human, render_json, render_markdown, render_summary

MAX_PLAN_BYTES = 64 * 1024 * 1024  # a saved plan larger than this is not one fleet wrote


async def _connect(nats: NatsSettings) -> Bus:
    return await connect(**nats.kwargs(), name="fleet-cli")


def render(plan: Plan, fmt: str, summary: bool = False) -> str:
    if fmt == "json":
        return render_json(plan)
    if fmt == "markdown":
        return render_markdown(plan)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return render_summary(plan, color=color) if summary else render_human(plan, color=color)


@click.command("plan")
@file_option
@nats_options
@click.option("--format", "fmt", type=click.Choice(["human", "json", "markdown"]), default="human", show_default=True,
              help="human for terminals, json for tools, markdown for a pull-request comment.")
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
@click.option("--summary", is_flag=True, help="One line per resource (for large plans).")
@click.option("--out", type=OutputFile(), help="Save the plan (JSON) for `fleet apply PLAN`.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there are no changes, 2 when there are; errors keep their own codes (docs/cli.md).")
@click.option("--refresh-only", is_flag=True, help="Show only drift: the live fleet against the applied state.")
@cyclic_gc_paused
def plan_cmd(file: Path, nats: NatsSettings, fmt: str, as_json: bool, summary: bool, out: Path | None,
             detailed_exitcode: bool, refresh_only: bool) -> None:
    """Show what `fleet apply` would change in the live fleet, and what that does to dispatch.

    Compares fleet.yaml (desired) with the applied state in the control plane and the hosts it observes.
    Secrets never appear in any format.
    """
    fmt = "json" if as_json else fmt
    result = load_config_or_report(file)

    cfg = result.config
    assert cfg is not None

    async def run() -> Plan:
        async with await _connect(nats) as bus:
            return await make_live_plan(bus, cfg, file, os.environ, refresh_only=refresh_only)

    plan = run_async(run)
    click.echo(render(plan, fmt, summary), nl=False)
    if out:
        atomic_write(out, plan.to_json() + "\n", mode=0o644)
        click.echo(f"\nSaved the plan to {out}. Apply exactly this plan with: fleet apply {out}", err=True)
    if detailed_exitcode and not plan.no_op:
        sys.exit(EXIT_CHANGES)


def read_saved_plan(path: Path) -> Plan | None:
    """The saved plan in `path`, or None when the file is not JSON (then it is a fleet.yaml: `fleet apply FILE`).
    Read once and bounded; a binary, non-UTF-8 or malformed file is refused in one line."""
    if path.suffix in (".yaml", ".yml"):
        return None
    raw = read_bounded(path, MAX_PLAN_BYTES, "PLAN_FILE")
    if not raw.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FleetError(f"{path} is not a saved plan (not UTF-8 text)",
                         hint="save one with `fleet plan --out plan.json`") from exc
    return Plan.from_json(text, str(path))


def _confirm(auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty() or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise UsageError("refusing to apply without confirmation: this is not an interactive terminal",
                         hint="in CI, review `fleet plan` and run `fleet apply --auto-approve`")
    answer = click.prompt("\nDo you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n"
                          "  Enter a value", default="", show_default=False)
    if answer.strip() != "yes":
        raise FleetError("apply cancelled", hint="nothing was written")


async def _confirm_async(auto_approve: bool) -> None:
    """_confirm on a daemon thread, so the event loop (and the lock refresher) runs while the user reads the plan,
    and Ctrl-C still ends the command at once."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def ask() -> None:
        error: BaseException | None = None
        try:
            _confirm(auto_approve)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=ask, name="fleet-apply-confirm", daemon=True).start()
    await done


class CliApplyView:
    """fleet.reconciler.operation.ApplyView on a terminal (or in CI): what `fleet apply` prints and asks."""

    def __init__(self, summary: bool, auto_approve: bool, reveal: SecretReveal) -> None:
        self.summary = summary
        self.auto_approve = auto_approve
        self.secrets = reveal
        self.interactive = sys.stderr.isatty()
        self._last_wait: str | None = None
        self._step = 1
        self.wrote = 0  # changes written so far (0 after a failure: the store is as it was)

    def lock_acquired(self, info: LockInfo) -> None:
        click.echo(f"Acquired the apply lock {info.id}.", err=True)

    def warning(self, text: str) -> None:
        click.echo(f"warning: {text}", err=True)

    def show_plan(self, plan: Plan) -> None:
        click.echo(render(plan, "human", self.summary), nl=False)
        self._step = max(1, len(plan.changes) // 10)

    async def confirm(self, plan: Plan) -> None:
        await _confirm_async(self.auto_approve)

    def progress(self, done: int, total: int, change: Change) -> None:
        self.wrote = done
        if self.interactive:
            click.echo(f"\r  applying {done}/{total} {change.symbol} {change.address[:60]:<60}", nl=False, err=True)
            if done == total:
                click.echo("", err=True)
        elif done % self._step == 0 or done == total or total <= 20:
            click.echo(f"  {change.symbol} {change.address} ({done}/{total})", err=True)

    def reveal(self, key_id: str, secret: str | None) -> None:
        self.secrets(key_id, secret)

    def applied(self, plan: Plan, report: ApplyReport) -> None:
        s = plan.summary
        click.secho(f"\nApply complete! Resources: {s.add} added, {s.change} changed, {s.destroy} destroyed"
                    + (f" ({report.already} were already in place)" if report.already else "")
                    + f" in {report.seconds:.3f}s.", bold=True)
        self.secrets.summary()

    def converging(self, left: list[str], elapsed: float) -> None:
        line = f"Waiting for {len(left)} host change(s) to converge ({elapsed:.0f}s): {left[0]}"
        if self.interactive:
            click.echo(f"\r{line[:110]:<110}", nl=False, err=True)
        elif line != self._last_wait:
            click.echo(line, err=True)
        self._last_wait = line

    def converged(self, elapsed: float) -> None:
        if self.interactive and self._last_wait is not None:
            click.echo("", err=True)
        click.echo(f"Converged: every live host runs the applied state ({elapsed:.1f}s).", err=True)


class SecretReveal:
    """Shows each generated key secret once, the moment it exists (before its hash is stored): on stderr, or
    appended to the --reveal-keys-to file (mode 0600)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.shown = 0

    def __call__(self, key_id: str, secret: str | None) -> None:
        if secret is None:
            self._void(key_id)
            return
        if self.path is not None:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as fh:
                    fh.write(f"{key_id}={secret}\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # before the key's hash is stored: nothing half-done
                raise FleetError(f"cannot write the secret of key {key_id} to {self.path}: {exc.strerror or exc}",
                                 hint="the key was not written; fix the path and run `fleet apply` again") from exc
        else:
            if not self.shown:
                click.secho("Generated enrollment key secrets (shown once; store them now, only hashes are kept):",
                            bold=True, err=True)
            click.echo(f"  {key_id}: {secret}", err=True)
        self.shown += 1

    def _void(self, key_id: str) -> None:
        self.shown -= 1
        if self.path is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines() if not ln.startswith(f"{key_id}=")]
            atomic_write(self.path, "".join(f"{ln}\n" for ln in kept))
        else:
            click.echo(f"  {key_id}: ignore the secret above: an earlier apply already stored this key "
                       "(use the secret it showed)", err=True)

    def summary(self) -> None:
        if self.path is not None and self.shown > 0:
            click.echo(f"Generated enrollment key secrets written to {self.path} (mode 0600). They are not shown again.",
                       err=True)


@click.command("apply")
@click.argument("plan_file", required=False, type=InputFile(max_bytes=MAX_PLAN_BYTES, what="saved plan or fleet.yaml"))
@file_option
@nats_options
@click.option("--auto-approve", is_flag=True, help="Apply without asking (required when not on a terminal, e.g. CI).")
@click.option("--lock-timeout", type=Seconds(0, 86400), default=0.0, show_default=True,
              help="Seconds to wait for the apply lock held by someone else (0: fail at once).")
@click.option("--reveal-keys-to", type=OutputFile(),
              help="Write generated enrollment key secrets to this file (mode 0600) instead of the terminal.")
@click.option("--summary", is_flag=True, help="Show the plan one line per resource.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the live hosts converge on the applied pools and host states.")
@click.option("--wait-timeout", type=Seconds(0, 86400), default=60.0, show_default=True,
              help="Seconds to wait for convergence before failing (the changes stay applied).")
@cyclic_gc_paused
def apply_cmd(plan_file: Path | None, file: Path, nats: NatsSettings, auto_approve: bool, lock_timeout: float,
              reveal_keys_to: Path | None, summary: bool, wait: bool = True, wait_timeout: float = 60.0) -> None:
    """Make the live fleet match fleet.yaml (or apply a saved plan: `fleet apply plan.json`).

    Takes the apply lock, computes the plan, asks for confirmation on a terminal (CI: --auto-approve), then
    writes each change with compare-and-set. A saved plan whose basis moved is refused.
    """
    saved: Plan | None = None
    config = None
    if plan_file is not None:
        saved = read_saved_plan(plan_file)
        if saved is None:
            file, plan_file = plan_file, None
    if saved is None:
        config = load_config_or_report(file).config
    request = ApplyRequest(file=file, config=config, saved=saved, env=os.environ, lock_timeout=lock_timeout,
                           wait=wait, wait_timeout=wait_timeout, command=f"fleet apply {plan_file or file}")
    run_apply(nats, request, CliApplyView(summary, auto_approve, SecretReveal(reveal_keys_to)))


def run_apply(nats: NatsSettings, request: ApplyRequest, view: CliApplyView) -> None:
    """The apply of `fleet apply` (and of `fleet route set --apply`), shown by `view` (whose `wrote` says afterwards
    whether anything reached the store)."""

    async def run() -> None:
        async with await _connect(nats) as bus:
            await apply(bus, request, view)

    run_async(run, _apply_interrupted)


def _apply_interrupted() -> tuple[str, str | None]:
    return ("the apply stopped where it was", "it released the apply lock; `fleet plan` shows what is left to apply")


@click.command("force-unlock")
@click.argument("lock_id", type=LOCK_ID)
@nats_options
def force_unlock_cmd(lock_id: str, nats: NatsSettings) -> None:
    """Remove the apply lock LOCK_ID left by a process that is gone.

    Only for a lock whose holder is dead: the lock also expires by itself after its TTL.
    """

    async def run() -> None:
        async with await _connect(nats) as bus:
            lock = await ApplyLock.open(bus)
            held = await lock.force_unlock(lock_id)
            click.echo(f"Removed {held.describe()}.")

    run_async(run)
