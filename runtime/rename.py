"""``rename``: another name for a container, in any state (docker rename).

The name lives in the record only: everything on the host is keyed by the container's id (cgroup,
network namespace and link, port tables, the shim, the namespaces other containers join), so a
running container keeps running untouched. Its /etc/hostname is not changed (docker's rule: the
hostname is the short id or ``--hostname``, not the name). Checkpoints keep the name they were
taken with: restoring one over its renamed exited original brings that name back (``restore
--name NEW`` picks another).

Uniqueness: the new name is checked and written under the state lock, the lock every creator
takes to reserve a name (runtime/state.py), and under ``name:<old>`` and ``name:<new>``, which a
restore holds while it builds a container of that name. A container a checkpoint or migration has
frozen (``frozen_by``) is refused; the engine also refuses one with an outgoing migration record
(migrate/engine.py), whose target must receive the name the migration started with.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from runtime.errors import Busy, InvalidArgument
from runtime.spec import ContainerInfo
from runtime.state import validate_name

if TYPE_CHECKING:  # pragma: no cover
    from runtime.runtime import Runtime

log = logging.getLogger(__name__)


def rename(rt: Runtime, name: str, new_name: str) -> ContainerInfo:
    """Rename container ``name`` to ``new_name``; its info.

    Raises:
        InvalidArgument: an invalid new name, or the container has it already.
        ContainerExists: another container has it. ContainerNotFound: no container ``name``.
        Busy: a checkpoint or migration freezes it, or a restore builds a container of either name.
    """
    validate_name(new_name)
    c = rt.container(name)
    if c.name == new_name:
        raise InvalidArgument(f"container {c.name} is named {new_name} already", hint="give a different new name")
    if c.state.frozen_by is not None:
        record = c.state.frozen_by
        raise Busy(f"container {c.name}", "rename", holder_pid=record.pid,
                   hint=f"a {record.operation} works on it; rename it when that is done")
    with contextlib.ExitStack() as held:
        for n in (c.name, new_name):  # Busy at once when a restore (or another rename) holds one
            held.enter_context(rt.store.hold(f"name:{n}", "rename container"))
        rt.store.rename(c.container_id, new_name)
    log.info("container=%s renamed %s -> %s", c.container_id, c.name, new_name)
    return rt.inspect(c.container_id)
