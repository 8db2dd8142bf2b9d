"""Gathering live state (the edge): the applied config from the store, plus hosts observed by the caller.

`gather(store, hosts)` reads one consistent snapshot of the applied config and builds the LiveState the pure
diff works on. Hosts come from the control plane's host API, which the CLI queries (fleet.service is a layer
above the reconciler) and passes in. `key_hashes(cfg, env, pepper)` turns each enrollment key's secret source into
the keyed digest the diff compares (fleet.bus.records.key_digest; a missing environment variable, or a pepper this
identity may not read, is a warning at plan time: the secret becomes "known after apply"; apply then requires
it). `key_secret_problems(cfg, env)` refuses weak and shared secrets: an environment secret must carry at least
128 bits by `secret_bits`'s estimate, and no two keys may share a secret. Called by `fleet plan` and `fleet apply`.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet.bus.applied import ConfigStore, Snapshot
from fleet.bus.records import key_digest
from fleet.reconciler.live import AppliedResource, LiveState, ObservedHost, ObservedInstance, QueuedSession
from fleet.schema.models import FleetConfig


@dataclass
class Gathered:
    live: LiveState
    snapshot: Snapshot


MIN_SECRET_BITS = 128
_ALPHABETS = (  # a secret drawn from one of these alphabets carries log2(size) bits per character
    ("hex", frozenset("0123456789abcdef"), 4.0),
    ("hex", frozenset("0123456789ABCDEF"), 4.0),
    ("base32", frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567="), 5.0),
    ("base64", frozenset(string.ascii_letters + string.digits + "+/=-_"), 6.0),
)


def secret_bits(secret: str) -> float:
    """A conservative estimate of the entropy of a secret, in bits: its length times the bits per character of the
    smallest alphabet it is drawn from (hex 4, base32 5, base64 6, else the character classes it uses), capped by
    1.3 times its Shannon entropy (so that `aaaa…` or `abab…` is weak however long). `openssl rand -hex 16` (32
    hex characters) is 128 bits; `local-dev-demo-secret` is about 100."""
    if not secret:
        return 0.0
    chars = set(secret)
    per_char = next((bits for _, alphabet, bits in _ALPHABETS if chars <= alphabet), None)
    if per_char is None:
        pool = sum(size for test, size in ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10))
                   if any(test(c) and c.isascii() for c in secret))
        pool += 33 if any(c in string.punctuation or c == " " for c in secret) else 0
        pool += 100 if any(not c.isascii() for c in secret) else 0
        per_char = math.log2(max(pool, 2))
    n = len(secret)
    shannon = -sum(k / n * math.log2(k / n) for k in Counter(secret).values()) * n
    return min(n * per_char, 1.3 * shannon)


def key_secret_problems(cfg: FleetConfig, env: Mapping[str, str]) -> list[str]:
    """Why the environment secrets of fleet.yaml's keys may not be used (empty when they may)."""
    problems = []
    seen: dict[str, str] = {}
    for key in cfg.keys:
        var = key.secret.from_env
        secret = env.get(var) if var else None
        if not secret:
            continue
        bits = secret_bits(secret)
        if bits < MIN_SECRET_BITS:
            problems.append(f"key {key.id}: the secret in {var} carries about {bits:.0f} bits; at least "
                            f"{MIN_SECRET_BITS} are needed (e.g. `openssl rand -hex 32`)")
        if secret in seen:
            problems.append(f"keys {seen[secret]} and {key.id} have the same secret: a host enrolling with it could "
                            "not be told apart (give each key its own)")
        seen.setdefault(secret, key.id)
    return problems


def key_hashes(cfg: FleetConfig, env: Mapping[str, str],
               pepper: bytes | None) -> tuple[dict[str, str | None], list[str]]:
    """The digest of each from_env key's secret (None for generated keys, unset variables, or without the pepper),
    and warnings."""
    out: dict[str, str | None] = {}
    warnings = []
    if pepper is None and any(k.secret.from_env and env.get(k.secret.from_env) for k in cfg.keys):
        warnings.append("these credentials cannot read the pepper of key digests (a read-only identity): "
                        "changes of key secrets are not shown")
    for key in cfg.keys:
        var = key.secret.from_env
        if var is None:
            out[key.id] = None
        elif env.get(var):
            out[key.id] = key_digest(pepper, env[var]) if pepper is not None else None
        else:
            out[key.id] = None
            warnings.append(f"key {key.id}: environment variable {var} is not set; its secret is known after apply "
                            "(apply will need it)")
    return out, warnings


def applied_from(snapshot: Snapshot) -> dict[str, AppliedResource]:
    return {key: AppliedResource(kind=r.kind, id=r.id, spec=r.spec, revision=r.revision)
            for key, r in snapshot.records.items()}


async def gather(store: ConfigStore, hosts: Iterable[ObservedHost] = (), *, hosts_observed: bool = True,
                 instances: Iterable[ObservedInstance] = (), queued: Iterable[QueuedSession] = ()) -> Gathered:
    snapshot = await store.snapshot()
    live = LiveState(applied=applied_from(snapshot), revision=snapshot.revision, hosts=tuple(hosts),
                     hosts_observed=hosts_observed, instances=tuple(instances), queued=tuple(queued))
    return Gathered(live, snapshot)
