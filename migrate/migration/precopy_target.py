"""The target half of pre-copy migration: one CRIU page server per pre-dump round, chained.

The source asks for each round's page server (``StartPrecopyRound``), pre-dumps into it while the
container runs, and closes its connection; the page server then exits. Layout under ROOT/tmp
(scratch: ``IncomingMigrations.reconcile`` removes it after a crash, abort and commit before):

    precopy-<mid>/round1/                 pagemap-*.img, pages-*.img of the first (full) round
    precopy-<mid>/round2/parent -> ../round1
    ...
    pages-<mid>/parent -> ROOT/tmp/precopy-<mid>/roundN
                                          the frozen dump's page server (incoming's disk-less one);
                                          ``_collect_pages`` copies this link beside the restore's
                                          images, so the restore follows the chain down to round 1

CRIU facts this relies on (criu/image.c, page-xfer.c in 4.1.1):
- ``--prev-images-dir X`` (``parent_img`` over RPC) only makes the link: ``symlinkat(X, dir,
  "parent")`` in ``open_image_dir``; every user then opens ``parent`` (``open_parent``). So the
  link made here before the page server starts is the same as the option (``start_page_server``
  takes none). A relative link resolves from the dir holding it; the final one is absolute because
  ``_collect_pages`` moves it to the restore's images dir.
- with a parent the page server answers the dump's ``PS_IOV_PARENT`` queries (is this pagemap in
  the parent?) and checks that each hole the dump flags ``PE_PARENT`` exists in the parent's
  pagemap: so a round starts only after the previous round's page server exited cleanly (its
  pagemap is complete on disk), and a failed round fails the next ``StartPrecopyRound``.
- a page server accepts exactly one connection and exits 0 at its end (``PS_IOV_CLOSE`` or EOF).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.errors import MigrationError, TransferError
from migrate.migration.precopy import round_dir_name
from runtime.errors import ContainerError
from runtime.fstree import remove_tree_quietly

log = logging.getLogger(__name__)

ROUND_WAIT_S = 60.0  # a round's page server exits right after the source's pre-dump returned
PARENT_LINK = "parent"  # CRIU's CR_PARENT_LINK (criu/include/image.h)


@dataclass
class _Round:
    number: int
    server: Any  # runtime.criu.CriuProcess
    guard: Any = None  # runtime.port_guard guard of a plain page server
    done: bool = False


class PrecopyRounds:
    """The page servers of the pre-copy rounds of every incoming migration on this host.

    Does not know the migration records: ``IncomingMigrations.start_precopy_round`` checks the
    migration's phase and mode and asks for a round or the final page server's parent."""

    def __init__(self, tmp: Path, *, tls: Any = None) -> None:
        self.tmp = tmp
        self.tls = tls
        self._rounds: dict[str, _Round] = {}  # the latest round of each migration
        self._lock = threading.Lock()

    def rounds_dir(self, migration_id: str) -> Path:
        return self.tmp / f"precopy-{migration_id}"

    def rounds(self, migration_id: str) -> int:
        """How many rounds were started for ``migration_id``."""
        current = self._rounds.get(migration_id)
        return current.number if current is not None else 0

    def start(self, migration_id: str, round_no: int, address: str, source: str | None = None) -> int:
        """Start round ``round_no``'s page server on ``address`` (after the previous round's
        finished cleanly) and return its port. Without TLS only ``source`` may connect."""
        from migrate.migration.postcopy import free_port
        from runtime.criu import start_page_server
        from runtime.port_guard import drop_guard, guard_or_warn

        expected = self.rounds(migration_id) + 1
        if round_no != expected:
            raise MigrationError(f"pre-copy round {round_no} of migration {migration_id}: expected round {expected}",
                                 phase="precopy")
        if round_no > 1:
            self._finish_round(migration_id)
        directory = self.rounds_dir(migration_id) / round_dir_name(round_no)
        guard = None
        try:
            directory.mkdir(parents=True, mode=0o700)
            if round_no > 1:
                os.symlink(f"../{round_dir_name(round_no - 1)}", directory / PARENT_LINK)
            port = free_port()
            if self.tls is None and source:
                guard = guard_or_warn(port, [source], label=f"migration={migration_id} pre-copy round {round_no}")
            server = start_page_server(directory, address, port, tls=self.tls)
        except (ContainerError, OSError) as exc:
            drop_guard(guard)
            raise TransferError(f"cannot start the page server of pre-copy round {round_no} of migration "
                                f"{migration_id} on {address}: {exc}", phase="precopy") from exc
        with self._lock:
            self._rounds[migration_id] = _Round(round_no, server, guard)
        log.info("migration=%s phase=precopy round=%d page server on %s:%d", migration_id, round_no, address, port)
        return port

    def finish(self, migration_id: str, final_round: int) -> Path:
        """Before the frozen dump's page server (``final_round`` = rounds + 1): wait until the last
        round's page server finished cleanly; return that round's dir (the final dump's parent)."""
        rounds = self.rounds(migration_id)
        if rounds < 1 or final_round != rounds + 1:
            raise MigrationError(f"final pre-copy dump {final_round} of migration {migration_id}: "
                                 f"expected {rounds + 1} after at least one round", phase="precopy")
        self._finish_round(migration_id)
        return self.rounds_dir(migration_id) / round_dir_name(rounds)

    def _finish_round(self, migration_id: str) -> None:
        from runtime.port_guard import drop_guard

        current = self._rounds[migration_id]
        if current.done:
            return
        try:
            current.server.wait(timeout_s=ROUND_WAIT_S)
        except ContainerError as exc:
            raise TransferError(f"the page server of pre-copy round {current.number} of migration {migration_id} "
                                f"failed: {exc.message}", phase="precopy") from exc
        except subprocess.TimeoutExpired:
            current.server.stop()
            raise TransferError(f"the page server of pre-copy round {current.number} of migration {migration_id} "
                                f"did not finish", phase="precopy") from None
        finally:
            if current.server.poll() is not None:
                drop_guard(current.guard)
                current.guard = None
        current.done = True

    def size_bytes(self, migration_id: str) -> int:
        """Bytes the rounds' page servers wrote so far (progress for ``IncomingMigrations.sweep``)."""
        total = 0
        root = self.rounds_dir(migration_id)
        try:
            for directory in root.iterdir():
                for p in directory.iterdir():
                    if p.is_file() and not p.is_symlink():
                        total += p.stat().st_size
        except OSError:
            pass
        return total

    def drop(self, migration_id: str) -> None:
        """Stop a running round's page server and remove every round. Idempotent."""
        from runtime.port_guard import drop_guard

        with self._lock:
            current = self._rounds.pop(migration_id, None)
        if current is not None:
            current.server.stop()
            drop_guard(current.guard)
        remove_tree_quietly(self.rounds_dir(migration_id))
