"""NATS decentralized auth, the parts fleet needs: nkeys, JWTs (operator, account, user), creds files.

NATS's own trust model (operator -> account -> user, each an ed25519 nkey; a JWT is a claim about a subject key
signed by its issuer's key) encoded here in ~150 lines, because the `nats-jwt` package writes `signing_keys` in a
shape nats-server rejects and drops revocations (../shared/notes/nats-trust.md). A JWT is
`base64url(header).base64url(claims).base64url(signature)` without padding, header `{"typ":"JWT","alg":"ed25519-nkey"}`,
`jti` = base32 of the SHA-512/256 of the claims serialised with an empty `jti`, the signature by the issuer's nkey over
`header.claims`. `verify()` checks a JWT's signature and issuer, for what fleet reads back (never trust a `200 jwt
updated`: verify the effect). Used by fleet.bus.identities (the identities and their permissions), the embedded
server setup, the enrollment authority (host JWTs) and `fleet creds`. Pure apart from key generation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from fleet.errors import FleetError

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
MAX_CREDS_BYTES = 16 * 1024

PREFIXES = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
            "user": nkeys.PREFIX_BYTE_USER}


class TrustError(FleetError):
    """A key, JWT or creds file is malformed, or a signature does not verify."""


@dataclass(frozen=True)
class Key:
    """An nkey: the seed (secret) and its public key."""

    seed: str
    public: str

    @classmethod
    def generate(cls, kind: str) -> Key:
        seed = nkeys.encode_seed(os.urandom(32), PREFIXES[kind]).decode()
        return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: str) -> Key:
        try:
            kp = nkeys.from_seed(bytearray(seed.encode()))
            public = kp.public_key.decode()
        except Exception as exc:  # nkeys raises its own and binascii errors for garbage
            raise TrustError(f"not an nkey seed ({type(exc).__name__})") from None
        return cls(seed, public)

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(bytearray(self.seed.encode())).sign(data)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, separators=(",", ":")).encode()


def encode(claims: dict[str, Any], issuer: Key) -> str:
    """Sign `claims` (they get `iss`, `iat` and `jti`) with `issuer`."""
    body = {**claims, "iss": issuer.public, "iat": claims.get("iat") or int(time.time()), "jti": ""}
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", _canonical(body)).digest()).decode().rstrip("=")
    head = _b64(_canonical(_HEADER))
    payload = _b64(_canonical(body))
    signature = issuer.sign(f"{head}.{payload}".encode())
    return f"{head}.{payload}.{_b64(signature)}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (TrustError if it is not one)."""
    try:
        _, payload, _ = token.strip().split(".")
        claims = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrustError(f"not a NATS JWT ({type(exc).__name__})") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("nats"), dict):
        raise TrustError("not a NATS JWT (no nats claims)")
    return claims


def verify(token: str, issuers: set[str] | frozenset[str]) -> dict[str, Any]:
    """The claims of a JWT whose signature verifies against its `iss`, which must be one of `issuers`."""
    claims = decode(token)
    if claims.get("iss") not in issuers:
        raise TrustError(f"JWT issued by {str(claims.get('iss'))[:12]}…, not by a trusted key")
    head, payload, signature = token.strip().split(".")
    try:
        VerifyKey(public_key_bytes(claims["iss"])).verify(f"{head}.{payload}".encode(), _unb64(signature))
    except (BadSignatureError, ValueError):
        raise TrustError("JWT signature does not verify") from None
    return claims


def public_key_bytes(public: str) -> bytes:
    """The 32 ed25519 bytes of a public nkey (`U…`, `A…`, `O…`), its checksum verified (ValueError if wrong)."""
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise ValueError("not a public nkey")
    if int.from_bytes(raw[-2:], "little") != nkeys.crc16(bytearray(raw[:-2])):
        raise ValueError("bad nkey checksum")
    return raw[1:33]


# ------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Permissions:
    """What a user may publish and subscribe to (NATS subject patterns), and whether it may answer requests."""

    pub_allow: tuple[str, ...] = ()
    pub_deny: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()
    responses: bool = False  # may publish one reply to a request it received (NATS `resp`)
    subs: int = -1  # most subscriptions of one connection (-1: no limit)
    payload: int = -1  # most bytes of one message it publishes (-1: the server's max_payload); more closes it

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pub": {}, "sub": {}, "subs": self.subs, "payload": self.payload}
        for side, allow, deny in (("pub", self.pub_allow, self.pub_deny), ("sub", self.sub_allow, self.sub_deny)):
            if allow:
                out[side]["allow"] = list(allow)
            if deny:
                out[side]["deny"] = list(deny)
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
#: most connections to the FLEET account at once: a fleet's hosts, servers and clients, with room to spare; a holder
#: of a shared identity (enroll.creds) cannot open connections without bound
ACCOUNT_MAX_CONNECTIONS = 250_000


def operator_jwt(operator: Key, name: str, system_account: str) -> str:
    return encode({"sub": operator.public, "name": name,
                   "nats": {"type": "operator", "version": 2, "system_account": system_account}}, operator)


def account_jwt(account: Key, operator: Key, name: str, *, signing_keys: tuple[str, ...] = (),
                jetstream: bool = False, revocations: dict[str, int] | None = None, iat: int | None = None) -> str:
    limits: dict[str, Any] = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                              "wildcards": True, "conn": ACCOUNT_MAX_CONNECTIONS, "leaf": -1}
    if jetstream:
        limits.update({"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1})
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits,
                            "default_permissions": {"pub": {}, "sub": {}}}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    if revocations:
        nats["revocations"] = dict(revocations)
    return encode({"sub": account.public, "name": name, "nats": nats, **({"iat": iat} if iat else {})}, operator)


def user_jwt(user_public: str, name: str, account: str, signer: Key, permissions: Permissions, *,
             expires: int | None = None, tags: tuple[str, ...] = ()) -> str:
    """A user JWT for `user_public` in `account`, signed by the account or one of its signing keys."""
    nats: dict[str, Any] = {"type": "user", "version": 2, **UNLIMITED, **permissions.claims()}
    if signer.public != account:
        nats["issuer_account"] = account
    if tags:
        nats["tags"] = list(tags)
    claims: dict[str, Any] = {"sub": user_public, "name": name, "nats": nats}
    if expires is not None:
        claims["exp"] = expires
    return encode(claims, signer)


# ------------------------------------------------------------------------------------------- creds files

_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def creds_text(jwt: str, seed: str) -> str:
    return _CREDS.format(jwt=jwt, seed=seed)


@dataclass(frozen=True)
class Creds:
    jwt: str
    seed: str
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def public(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def inbox_prefix(self) -> str:
        """The reply-inbox prefix this identity subscribes to (fleet.bus.identities gives each user its own)."""
        return inbox_prefix(self.public)


def inbox_prefix(user_public: str) -> str:
    return f"_INBOX.{user_public}"


def parse_creds(text: str) -> Creds:
    blocks = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("-", "*"))
              and " " not in line.strip()]
    jwts = [b for b in blocks if b.count(".") == 2]
    seeds = [b for b in blocks if b.startswith("SU")]
    if len(jwts) != 1 or len(seeds) != 1:
        raise TrustError("not a NATS creds file (one user JWT and one user seed expected)")
    claims = decode(jwts[0])
    if Key.from_seed(seeds[0]).public != claims.get("sub"):
        raise TrustError("the creds file's seed does not belong to its JWT")
    return Creds(jwts[0], seeds[0], claims)


def read_creds(path: str | Path) -> Creds:
    """A creds file (bounded read; TrustError with the reason if it is not one)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CREDS_BYTES + 1)
    except OSError as exc:
        raise TrustError(f"cannot read creds file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CREDS_BYTES:
        raise TrustError(f"{path} is not a NATS creds file (larger than {MAX_CREDS_BYTES} bytes)")
    try:
        return parse_creds(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TrustError(f"{path} is not a NATS creds file (not text)") from None
    except TrustError as exc:
        raise TrustError(f"{path}: {exc.message}") from None


def write_secret(path: Path, text: str) -> None:
    """Write a secret file with mode 0600 from the start (never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
