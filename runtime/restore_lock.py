"""A restore's loopback lock: no packet enters the restored network namespace through ``lo``
until its tasks are about to resume, when the dump left TCP data not sent yet.

Why: CRIU restores a TCP socket's not-sent data by sending it once the socket leaves repair mode,
while other sockets of the tree may not be restored yet. For a connection over loopback inside
the container (haproxy and its backend on 127.0.0.1), the peer's kernel then finds no socket for
the segment and answers with a RST: ``soccr: Can't restore not-sent send queue data ...
Connection reset by peer``, and the restore fails. Dropped on input instead, the segment is lost
like any other and TCP sends it again once the lock is gone (pre-resume). The veth is down until
then anyway (runtime/restore_start.py), so only loopback needs it. Cost: one ``nft`` run each way
(~10-25 ms), paid only by a checkpoint whose images hold not-sent data (``tcp-stream`` images'
``unsq_len``); others restore as before.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

TABLE = "pymigrate_restore_lock"
NFT_TIMEOUT_S = 10.0


def unsent_tcp_data(images_dir: Path) -> bool:
    """Whether a dumped TCP socket holds data it had not sent (CRIU's tcp-stream images)."""
    from runtime.criu import read_first_entry

    for path in Path(images_dir).glob("tcp-stream-*.img"):
        try:
            entry = read_first_entry(path, "tcp_stream_entry", "tcp_stream_pb2")  # then the raw queues
        except Exception as exc:  # noqa: BLE001 - unreadable here: no lock, CRIU judges the image itself
            log.debug("cannot read %s: %s", path, exc)
            continue
        if entry is not None and entry.unsq_len:
            return True
    return False


def lock(netns: str) -> bool:
    """Drop what enters ``netns`` through lo; False (logged) when nft cannot, and the restore
    goes on without it (as before this lock existed)."""
    script = (f"add table inet {TABLE}\n"
              f"add chain inet {TABLE} input {{ type filter hook input priority -300; policy accept; }}\n"
              f"add rule inet {TABLE} input iif lo drop\n")
    return _nft(netns, script)


def unlock(netns: str) -> bool:
    return _nft(netns, f"delete table inet {TABLE}\n")


def _nft(netns: str, script: str) -> bool:
    nft = shutil.which("nft")
    if nft is None:
        log.warning("nft is not installed: a restore's loopback is not locked")
        return False
    try:
        r = subprocess.run(["nsenter", f"--net={netns}", nft, "-f", "-"], input=script, capture_output=True, text=True,
                           timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot run nft in %s: %s", netns, exc)
        return False
    if r.returncode != 0:
        log.warning("nft in %s: %s", netns, r.stderr.strip())
        return False
    return True
