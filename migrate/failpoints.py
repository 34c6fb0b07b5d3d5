"""Named failpoints: let fault tests stop a daemon at an exact step of a migration.

A migration's fault windows are milliseconds wide (the target's answer follows its restore within
a millisecond), so a test cannot hit them by watching from outside. The drivers call
``hit(name)`` at each step that matters; the environment variable ``PYMIGRATE_FAILPOINTS`` of the
daemon process (read once) arms some of them::

    PYMIGRATE_FAILPOINTS="target.answer=sleep:20,source.commit=kill"

    sleep:S   log "failpoint NAME hit" and block this thread for S seconds (the test then cuts the
              link or kills a daemon while the step is held)
    kill      log, then SIGKILL this process (a crash at exactly that step)

Unarmed failpoints cost one dict lookup. The names in use are listed in ``NAMES`` (a typo in the
variable is logged at the first ``hit``, not silently ignored).
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

ENV = "PYMIGRATE_FAILPOINTS"

NAMES = (
    "source.prepared",  # the target reserved (prepare_incoming answered)
    "target.image",  # the target receives the base image (first chunk in)
    "target.upper",  # the target stages the upper layer (first chunk in)
    "source.dump",  # frozen, the archive streaming (CRIU done, the trailer not sent)
    "target.restore",  # the whole archive arrived; CRIU's restore about to start
    "target.answer",  # restored and recorded; the answer not sent yet
    "source.commit",  # the answer arrived; the target not told to commit yet
    "checkpoint.archive",  # checkpoint --leave-running --export: thawed, the archive not written yet
    "checkpoint.teardown",  # checkpoint answered, the tree killed; its detached teardown not started
)

_armed: dict[str, str] | None = None


def _parse(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = item.partition("=")
        if name not in NAMES:
            log.warning("%s: unknown failpoint %r (known: %s)", ENV, name, ", ".join(NAMES))
            continue
        out[name] = action
    return out


def hit(name: str) -> None:
    """Run the action armed for ``name``, if any (see the module doc)."""
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get(ENV, ""))
    action = _armed.get(name)
    if not action:
        return
    log.warning("failpoint %s hit: %s", name, action)
    kind, _, arg = action.partition(":")
    if kind == "sleep":
        time.sleep(float(arg or 10))
    elif kind == "kill":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        log.warning("failpoint %s: unknown action %r", name, action)
