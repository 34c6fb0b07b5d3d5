"""Restart policy names (``run --restart``, the spec's ``restart``): parsed and normalised here,
apart from runtime/restart.py (which starts containers and so imports the Runtime), so that the
spec validator (runtime/container.py) can check them without an import circle."""

from __future__ import annotations

import re

from runtime.errors import InvalidArgument

POLICIES = ("no", "on-failure", "always", "unless-stopped")
_POLICY_RE = re.compile(r"(no|always|unless-stopped|on-failure)(?::(\d{1,9}))?")


def parse_policy(text: str) -> str:
    """``no``, ``on-failure``, ``on-failure:N`` (N >= 0; 0: no cap), ``always`` or ``unless-stopped``.

    Raises:
        InvalidArgument: anything else (a count on another policy, a negative count).
    """
    m = _POLICY_RE.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if m is None or (m.group(2) is not None and m.group(1) != "on-failure"):
        raise InvalidArgument(f"invalid restart policy {text!r}",
                              hint="no, on-failure[:MAX-RETRIES], always or unless-stopped")
    if m.group(2) is not None and int(m.group(2)) > 0:
        return f"on-failure:{int(m.group(2))}"
    return m.group(1)


def max_retries(policy: str) -> int:
    """``on-failure:N``'s N; 0 for no cap (and for the other policies)."""
    name, _, count = policy.partition(":")
    return int(count) if name == "on-failure" and count else 0
