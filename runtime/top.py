"""``pymigrate top``: a container's processes as the host's ``ps`` shows them (docker's way).

``ps`` runs on the host with the user's options (default ``-ef``); only the rows whose PID column
is one of the container's pids are kept. The pids are those of the container's cgroup and every
cgroup below it (``CgroupManager.pids``), so processes of ``exec`` and of nested cgroups count.
The last column (the command) may hold spaces: each row is split into as many fields as the
header has titles, the last one taking the rest (docker does the same).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ContainerError, InvalidArgument, InvalidState

DEFAULT_PS_ARGS = ("-ef",)
PS_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopResult:
    titles: list[str]
    processes: list[list[str]] = field(default_factory=list)


def filter_ps(output: str, pids: set[int]) -> TopResult:
    """The header and the rows of ``ps`` output whose PID is in ``pids``.

    Raises:
        InvalidArgument: the output has no PID column (options such as ``-o comm`` alone).
    """
    lines = output.splitlines()
    if not lines:
        raise InvalidArgument("ps printed nothing: expected a header line with a PID column")
    titles = lines[0].split()
    if "PID" not in titles:
        raise InvalidArgument(f"ps output has no PID column (titles: {' '.join(titles)})",
                              hint="pass ps options that print the PID, e.g. -o pid,comm")
    at = titles.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= at:
            continue
        try:
            pid = int(fields[at])
        except ValueError:
            continue
        if pid in pids:
            rows.append(fields)
    return TopResult(titles=titles, processes=rows)


def top(rt: Any, name: str, ps_args: tuple[str, ...] = ()) -> TopResult:
    """The processes of running or paused container ``name`` (a Runtime's), via host ``ps``.

    Raises:
        InvalidState: the container is not running or paused.
        ContainerError: ``ps`` failed (bad options; its message is quoted).
    """
    c = rt.container(name)
    if not c.is_live:
        raise InvalidState(c.name, "list the processes of", c.status, ("running", "paused"))
    pids = set(rt.cgroups(c.spec.cgroup_parent).pids(c.container_id))
    argv = ["ps", *(ps_args or DEFAULT_PS_ARGS)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PS_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise ContainerError("cannot list processes: the host has no ps command",
                             hint="install procps (apt-get install procps)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"ps {' '.join(argv[1:])} did not finish within {PS_TIMEOUT_S:g}s") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise ContainerError(f"ps {' '.join(argv[1:])} failed with exit code {done.returncode}: {detail}",
                             hint="the options are the host ps's (procps), e.g. -ef or -o pid,user,args")
    return filter_ps(done.stdout, pids)
