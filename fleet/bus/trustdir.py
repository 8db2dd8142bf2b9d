"""The trust directory of a fleet: the keys, JWTs and creds files of NATS decentralized auth, and nats-server's config.

`fleet up` creates it under its state dir (`<state>/trust/`, mode 0700, every file 0600) the first time and reuses
it afterwards; `fleet server --trust-dir` reads it to sign host identities at enrollment and to revoke them;
`fleet creds create` issues more identities from it. Layout:

    operator.nk  sys.nk  account.nk  signing.nk     nkey seeds: the operator, the SYS and FLEET accounts, and the
                                                     FLEET account's signing key (it signs every user JWT)
    operator.jwt  sys.jwt  account.jwt               the operator and account JWTs (account.jwt: as first issued)
    server.creds  sys.creds                          the fleet server's identities (FLEET, and SYS for revocations)
    admin.creds  viewer.creds  enroll.creds          an operator, a read-only reviewer, and the bearer identity that
                                                     unenrolled agents use to reach `fleet.v1.enroll` (and only that)

Revocations: the FLEET account JWT is re-signed by the operator with a `revocations` map (user public key -> the
time before which that key's JWTs are void) and pushed to nats-server, which closes the revoked connections at
once and refuses them from then on (fleet.hosts.revocation does the pushing). Called by fleet.cli.runtime_cmds,
fleet.cli.creds_cmds, fleet.service.server and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fleet.bus import identities
from fleet.bus.trust import (
    Key,
    Permissions,
    TrustError,
    account_jwt,
    creds_text,
    operator_jwt,
    read_creds,
    user_jwt,
    write_secret,
)

OPERATOR_NAME = "fleet"
ACCOUNT_NAME = "FLEET"
SYS_NAME = "SYS"
ROLE_FILES = {"admin": "admin.creds", "viewer": "viewer.creds", "enroll": "enroll.creds"}


@dataclass(frozen=True)
class TrustDir:
    root: Path
    operator: Key
    sys_account: Key
    account: Key
    signing: Key

    # ------------------------------------------------------------------------------------------ create / load
    @classmethod
    def create(cls, root: Path) -> TrustDir:
        """The trust directory at `root`: loaded if it exists, created (keys, JWTs, creds) if it does not."""
        root = Path(root)
        if (root / "signing.nk").exists():
            return cls.load(root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        keys = {name: Key.generate(kind) for name, kind in
                (("operator", "operator"), ("sys", "account"), ("account", "account"), ("signing", "account"))}
        trust = cls(root, keys["operator"], keys["sys"], keys["account"], keys["signing"])
        write_secret(root / "operator.jwt", operator_jwt(trust.operator, OPERATOR_NAME, trust.sys_account.public))
        write_secret(root / "sys.jwt", account_jwt(trust.sys_account, trust.operator, SYS_NAME))
        write_secret(root / "account.jwt", trust.account_jwt({}))
        write_secret(root / "server.creds", trust.issue("server", identities.server()))
        sys_user = Key.generate("user")
        write_secret(root / "sys.creds", creds_text(
            user_jwt(sys_user.public, "fleet-server-sys", trust.sys_account.public, trust.sys_account, Permissions()),
            sys_user.seed))
        for role, filename in ROLE_FILES.items():
            write_secret(root / filename, trust.issue_role(role, name=f"{role} ({root.parent.name or 'fleet'})"))
        for name in ("operator", "sys", "account", "signing"):  # the seeds last: their presence means "complete"
            write_secret(root / f"{name}.nk", getattr(trust, {"sys": "sys_account"}.get(name, name)).seed + "\n")
        return trust

    @classmethod
    def load(cls, root: Path) -> TrustDir:
        root = Path(root)
        seeds = {}
        for name in ("operator", "sys", "account", "signing"):
            path = root / f"{name}.nk"
            try:
                seeds[name] = Key.from_seed(path.read_text(encoding="utf-8").strip()[:200])
            except (OSError, UnicodeDecodeError) as exc:
                raise TrustError(f"incomplete trust directory {root}: cannot read {path.name} ({exc})",
                                 hint="it is created by `fleet up`; pass --trust-dir to the one it made") from None
        return cls(root, seeds["operator"], seeds["sys"], seeds["account"], seeds["signing"])

    # ------------------------------------------------------------------------------------------ identities
    def issue(self, name: str, permissions: Permissions, user: Key | None = None, tags: tuple[str, ...] = ()) -> str:
        """A creds file's text for a new user (or `user`) of the FLEET account with these permissions."""
        user = user or Key.generate("user")
        return creds_text(user_jwt(user.public, name, self.account.public, self.signing, permissions, tags=tags),
                          user.seed)

    def issue_role(self, role: str, *, name: str, tenant: str | None = None) -> str:
        """A creds file for a new identity of `role` (its JWT is tagged `role:<role>` and, for a submitter,
        `tenant:<tenant>`: the session client reads its tenant from there)."""
        user = Key.generate("user")
        tags = (f"role:{role}",) + ((f"tenant:{tenant}",) if tenant else ())
        if role == "enroll":
            return self.issue(name, identities.enroll(), user, tags)
        return self.issue(name, identities.for_role(role, user.public, tenant), user, tags)

    def host_jwt(self, user_public: str, machine_id: str, hostname: str, tenant: str) -> str:
        """The JWT of an enrolled host: it may use only its own subjects (fleet.bus.identities.host)."""
        return user_jwt(user_public, hostname, self.account.public, self.signing,
                        identities.host(user_public, machine_id), tags=(f"tenant:{tenant}", f"host:{machine_id}"))

    def account_jwt(self, revocations: dict[str, int], *, iat: int | None = None) -> str:
        """The FLEET account JWT (JetStream enabled, the signing key, its limits), with these revocations, issued at
        `iat` (default: now)."""
        return account_jwt(self.account, self.operator, ACCOUNT_NAME, signing_keys=(self.signing.public,),
                           jetstream=True, revocations=revocations, iat=iat)

    def identity_keys(self) -> frozenset[str]:
        """The public keys of the identities whose creds files are in the trust directory (server, sys, admin,
        viewer, enroll, …): enrollment never makes one of them a host's identity."""
        keys = set()
        for path in sorted(self.root.glob("*.creds")):
            try:
                keys.add(read_creds(path).public)
            except TrustError:
                continue
        return frozenset(keys)

    @property
    def issuers(self) -> frozenset[str]:
        """The keys that may sign FLEET users."""
        return frozenset({self.account.public, self.signing.public})

    def path(self, filename: str) -> Path:
        return self.root / filename

    # ------------------------------------------------------------------------------------------ nats-server
    def nats_conf(self, host: str, port: int, store_dir: Path, jwt_dir: Path) -> str:
        """nats-server's config: operator mode, the full resolver (revocations pushed by the server are kept in
        `jwt_dir` and survive restarts), both accounts preloaded. No anonymous access, no other auth. (`host`,
        `port` and `store_dir` go on the command line, fleet.bus.embedded.EmbeddedNats.)"""
        sys_jwt = (self.root / "sys.jwt").read_text().strip()
        acc_jwt = (self.root / "account.jwt").read_text().strip()
        op_jwt = (self.root / "operator.jwt").read_text().strip()
        return (f"# written by `fleet up` from {self.root}; regenerated at every start. The listen address and JetStream\n"
                f"# (store dir {store_dir}) are given on nats-server's command line.\n"
                f"operator: {op_jwt}\n"
                f"system_account: {self.sys_account.public}\n"
                f"resolver: {{ type: full, dir: {_quote(jwt_dir)}, allow_delete: false, interval: \"2m\" }}\n"
                f"resolver_preload: {{\n  {self.sys_account.public}: {sys_jwt}\n  {self.account.public}: {acc_jwt}\n}}\n")


    def write_nats_conf(self, state_dir: Path, host: str, port: int) -> Path:
        """Write `state_dir`/nats.conf (mode 0600) for a nats-server that stores under `state_dir`/nats, as
        fleet.bus.embedded.EmbeddedNats(store_dir=state_dir / "nats", extra_args=["-c", conf]) runs it; the path."""
        conf = state_dir / "nats.conf"
        write_secret(conf, self.nats_conf(host, port, state_dir / "nats", state_dir / "nats" / "jwt"))
        return conf


def _quote(path: Path) -> str:
    text = str(path)
    if '"' in text or "\\" in text or "\n" in text:
        raise TrustError(f"unusable path for nats-server's config: {text!r}")
    return f'"{text}"'
