"""Security events of dispatch, counted and logged at a bounded rate. No I/O but the log.

Used by the dispatcher (fleet.dispatch.dispatcher: another host's claims, a revoked host's reports) and its submit
path (fleet.dispatch.submit: another tenant's project). Every event counts in the dispatcher's metrics (`kind`);
its `security: …` line is logged at most once per kind and identity every SECURITY_LOG_EVERY_S: a host or a
submitter that repeats one as fast as it can must not write a log line per message (the disk, and the operator's
attention, are not theirs to fill).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

log = logging.getLogger("fleet.dispatch.dispatcher")  # the name operators grep for

SECURITY_LOG_EVERY_S = 10.0  # one `security:` line per kind of event and identity this often at most (the rest: counted)
SECURITY_LOG_KEYS = 4096  # identities remembered for that (then forgotten all at once: memory stays bounded)


class SecurityLog:
    def __init__(self, metrics: Counter[str]) -> None:
        self.metrics = metrics
        self._logged: dict[tuple[str, str], float] = {}  # (kind, who) -> when last logged (monotonic)

    def note(self, kind: str, who: str, msg: str, *args: Any) -> None:
        self.metrics[kind] += 1
        now, key = time.monotonic(), (kind, who)
        last = self._logged.get(key)
        if last is not None and now - last < SECURITY_LOG_EVERY_S:
            return
        if len(self._logged) >= SECURITY_LOG_KEYS:
            self._logged.clear()
        self._logged[key] = now
        log.warning("security: " + msg + " (%d %s so far; at most one line every %gs)", *args, self.metrics[kind],
                    kind, SECURITY_LOG_EVERY_S)
