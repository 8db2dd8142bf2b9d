"""`fleet creds create`: issue another NATS identity of the fleet (an operator, a reviewer, a tenant's submitter, …).

The identity is a NATS user of the FLEET account, signed with the account's signing key from the trust directory
(fleet.bus.trustdir; `fleet up` makes it under `<state dir>/trust`), with the permissions of its role
(fleet.bus.identities): admin (apply, revoke, everything operators do), viewer (plan, list, show: read only),
submitter (the session API of one tenant), enroll (what unenrolled agents use: the enrollment request only). The
creds file (JWT + nkey seed) is written with mode 0600; hand it over like a password. Listed in
fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from fleet.bus.trust import TrustError, parse_creds, write_secret
from fleet.bus.trustdir import TrustDir
from fleet.cli.options import DEFAULT_STATE_DIR, ID, OutputFile
from fleet.errors import UsageError

ROLES = ("admin", "viewer", "submitter", "enroll")


def _trust_dir(given: Path | None) -> TrustDir:
    root = given or Path(os.environ.get("FLEET_STATE_DIR") or DEFAULT_STATE_DIR) / "trust"
    if not (root / "signing.nk").is_file():
        raise UsageError(f"no trust directory at {root}",
                         hint="run this where `fleet up` ran (it makes .fleet/trust), or pass --trust-dir")
    try:
        return TrustDir.load(root)
    except TrustError as exc:
        raise UsageError(exc.message, hint=exc.hint) from exc


@click.group("creds")
def creds_group() -> None:
    """NATS identities of the fleet: issue more (admin, viewer, a tenant's submitter, enroll)."""


@creds_group.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="admin: apply, revoke, everything; viewer: plan, list, show (read only); submitter: the sessions "
                   "of one tenant (--tenant); enroll: what unenrolled agents use to enroll, and nothing else.")
@click.option("--tenant", type=ID, default=None, help="The tenant of a submitter.")
@click.option("--name", type=ID, default=None, help="A name for the identity (shown in nats-server's logs).")
@click.option("-o", "--out", "out", type=OutputFile(), required=True, help="Where to write the creds file (mode 0600).")
@click.option("--trust-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), envvar="FLEET_TRUST_DIR",
              show_envvar=True, default=None,
              help="The fleet's trust directory (default: .fleet/trust under FLEET_STATE_DIR).")
def create_cmd(role: str, tenant: str | None, name: str | None, out: Path, trust_dir: Path | None) -> None:
    """Write a creds file for a new identity of ROLE, signed by the fleet's account signing key."""
    if role == "submitter" and not tenant:
        raise UsageError("a submitter belongs to one tenant", hint="pass --tenant TENANT")
    if role != "submitter" and tenant:
        raise UsageError(f"--tenant is for submitters; a {role} is not scoped to a tenant")
    trust = _trust_dir(trust_dir)
    label = name or (f"{role}-{tenant}" if tenant else role)
    text = trust.issue_role(role, name=label, tenant=tenant)
    try:
        write_secret(out, text)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    user = parse_creds(text).public
    click.echo(f"wrote {out} (mode 0600): {role} identity {label!r}"
               + (f" of tenant {tenant}" if tenant else "") + f", NATS user {user}")
    click.echo("use it with --creds FILE or FLEET_NATS_CREDS; keep it as secret as a password", err=True)
