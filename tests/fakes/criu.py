"""``FakeCriu``: the ``runtime.criu.Criu`` protocol without CRIU, for unit tests of the
checkpoint/restore orchestration (migrate/checkpoint.py, migrate/restore.py).

``dump`` writes a tiny images dir (inventory.img, pagemap-1.img, pages-1.img of ``pages`` pages,
a dump.log) and returns canned ``DumpStats``; ``restore`` records the request and returns a pid.
``fail_dump`` / ``fail_restore`` make the call write a log with a CRIU-style ``Error (`` line and
raise ``CriuError`` quoting it, as ``SwrkCriu`` does. Every call is recorded in ``calls``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.criu import DUMP_LOG, RESTORE_LOG, DumpRequest, DumpStats, RestoreRequest, log_excerpt
from runtime.errors import CriuError

PAGE = 4096
CANNED_STATS = DumpStats(
    freezing_ms=0.5, frozen_ms=12.0, memdump_ms=3.0, memwrite_ms=2.0, pages_scanned=64, pages_written=16
)


@dataclass
class FakeCriu:
    criu_version: str = "4.1.1"
    pages: int = 16
    stats: DumpStats = CANNED_STATS
    fail_dump: str | None = None  # error text CRIU "logs" before failing the dump
    fail_restore: str | None = None
    restored_pid: int = 4243
    calls: list[tuple[str, Any]] = field(default_factory=list)
    during_dump: Callable[[DumpRequest], None] | None = None  # runs while "dumping" (e.g. to check a freeze)

    def version(self) -> str:
        self.calls.append(("version", None))
        return self.criu_version

    def warm(self) -> None:
        self.calls.append(("warm", None))

    def dump(self, request: DumpRequest, *, on_notify: Any = None) -> DumpStats:
        self.calls.append(("dump", request))
        work = request.work_dir or request.images_dir
        if self.during_dump is not None:
            self.during_dump(request)
        if self.fail_dump is not None:
            raise _failure(work / DUMP_LOG, "dump", self.fail_dump)
        (request.images_dir / "inventory.img").write_bytes(b"\x01inventory")
        (request.images_dir / "pagemap-1.img").write_bytes(b"\x02pagemap")
        (request.images_dir / "pages-1.img").write_bytes(bytes(range(256)) * (self.pages * PAGE // 256))
        (work / DUMP_LOG).write_text("(00.000001) fake dump\n(00.000002) Dumping finished successfully\n")
        return self.stats

    def restore(self, request: RestoreRequest, *, on_spawn: Callable[[int], None] | None = None, on_notify: Any = None) -> int:
        self.calls.append(("restore", request))
        if on_spawn is not None:
            on_spawn(99999)
        if self.fail_restore is not None:
            raise _failure((request.work_dir or request.images_dir) / RESTORE_LOG, "restore", self.fail_restore)
        return self.restored_pid

    def requests(self, kind: str) -> list[Any]:
        return [req for name, req in self.calls if name == kind]


def _failure(log_path: Path, operation: str, text: str) -> CriuError:
    log_path.write_text(f"(00.000001) {operation} starts\n(00.000002) Error (criu/fake.c:1): {text}\n(00.000003) {operation} failed\n")
    return CriuError(operation, text, log_path=log_path, log_lines=log_excerpt(log_path))
