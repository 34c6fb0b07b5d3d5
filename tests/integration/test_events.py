"""WatchEvents over real daemons (issue 15): ``pymigrate --host ADDR events`` sees a container's
lifecycle in order, and a watcher killed mid-migration and resumed with its last cursor gets
exactly the events it missed, on the source and on the target.

The journal is written by every process of a state root (the CLI without a daemon, the shims,
the daemon): the containers here are run by the local CLI and watched through the daemon.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from runtime.events import Journal
from tests.integration.hosts import Host, pymigrate_command
from tests.integration.migration_lab import IMAGE, Lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "criu", "pycriu", "netns", "busybox", "overlay"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.create(Path(tmp_path_factory.mktemp("events"))) as made:
        yield made


class Watcher:
    """``pymigrate --host ADDR events --json --since CURSOR`` in a host's namespace; its lines read
    by a thread so a test can wait for an event with a deadline."""

    def __init__(self, lab: Lab, host: Host, since: int, *filters: str) -> None:
        args = [f"--filter={f}" for f in filters]
        self.proc = host.popen([*pymigrate_command(), "--host", lab.addr(host), "--insecure", "events", "--json",
                                "--since", str(since), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def until(self, type: str, action: str, name: str | None = None, timeout_s: float = 60) -> dict[str, Any]:
        """Events up to and including the first ``type``/``action`` (of ``name``) from now."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                event = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {type} {action} event within {timeout_s}s; saw {self.summary()}") from None
            if event is None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"the watcher ended (rc={self.proc.wait()}): {err}; saw {self.summary()}")
            self.events.append(event)
            if event["type"] == type and event["action"] == action and name in (None, event["name"]):
                return event

    def stop(self) -> None:
        self.proc.kill()  # a disconnect as a crash makes it: no goodbye to the daemon
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def summary(self) -> list[str]:
        return [f"{e['sequence']}:{e['type']}/{e['action']}" for e in self.events]


def cursor(host: Host) -> int:
    return Journal(host.root).last_sequence()


def actions(events: list[dict[str, Any]], name: str) -> list[str]:
    return [f"{e['type']}/{e['action']}" for e in events if e["name"] == name]


def test_watcher_sees_container_lifecycle_in_order(lab: Lab) -> None:
    a = lab.hosts[0]
    watcher = Watcher(lab, a, cursor(a), "type=container", "container=ev-life")
    try:
        r = a.cli(["run", "-d", "--name", "ev-life", "--label", "team=blue", IMAGE, "sh", "-c", "sleep 0.5; exit 3"])
        assert r.returncode == 0, r.stderr.decode()
        a.cli(["wait", "ev-life"], check=True)
        a.cli(["rm", "ev-life"], check=True)
        watcher.until("container", "remove", "ev-life")
    finally:
        watcher.stop()
    assert actions(watcher.events, "ev-life") == ["container/create", "container/start", "container/die",
                                                   "container/remove"]
    die = watcher.events[2]
    assert die["attributes"]["exitCode"] == "3"  # seen by the container's shim, not the CLI
    assert all(e["attributes"].get("team") == "blue" and e["attributes"].get("image") == IMAGE for e in watcher.events)
    sequences = [e["sequence"] for e in watcher.events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4


def test_local_events_of_an_auto_removed_and_a_restarted_container(lab: Lab) -> None:
    """Without a daemon: the local CLI reads the journal that the CLI and the shims wrote."""
    a = lab.hosts[0]
    since = cursor(a)
    r = a.cli(["run", "-d", "--rm", "--name", "ev-rm", IMAGE, "sh", "-c", "exit 0"])
    assert r.returncode == 0, r.stderr.decode()
    r = a.cli(["run", "-d", "--name", "ev-again", "--restart", "on-failure:1", IMAGE, "sh", "-c", "exit 7"])
    assert r.returncode == 0, r.stderr.decode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(actions([e.to_json() for e in Journal(a.root).read(since)], "ev-again")) < 5:
        time.sleep(0.2)
    until = f"{time.time() + 1:.3f}"  # follows, then stops at --until
    out = a.cli(["events", "--since", str(since), "--until", until, "--json", "-f", "type=container"], check=True)
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert actions(events, "ev-rm") == ["container/create", "container/start", "container/die", "container/remove"]
    assert [e for e in events if e["name"] == "ev-rm"][3]["attributes"]["auto_remove"] == "true"
    again = [e for e in events if e["name"] == "ev-again"]
    assert [e["action"] for e in again] == ["create", "start", "die", "start", "die"]
    assert again[3]["attributes"]["restartCount"] == "1" and again[4]["attributes"]["exitCode"] == "7"
    a.cli(["rm", "-f", "ev-again"], check=True)


def test_checkpoint_and_restore_events(lab: Lab) -> None:
    a = lab.hosts[0]
    since = cursor(a)
    r = a.cli(["run", "-d", "--name", "ev-ck", "--label", "tier=db", IMAGE, "sleep", "1000"])
    assert r.returncode == 0, r.stderr.decode()
    r = a.cli(["checkpoint", "ev-ck", "--label", "kept=yes", "--json"])
    assert r.returncode == 0, r.stderr.decode()
    checkpoint_id = json.loads(r.stdout)["checkpoint_id"]
    a.cli(["restore", checkpoint_id], check=True)
    a.cli(["rm", "-f", "ev-ck"], check=True)
    a.cli(["checkpoint", "rm", checkpoint_id], check=True)
    events = [e.to_json() for e in Journal(a.root).read(since)]
    seen = actions(events, "ev-ck")
    wanted = ["container/create", "container/start", "checkpoint/create", "container/restore", "container/start",
              "container/remove", "checkpoint/remove"]
    assert [s for s in seen if s in wanted] == wanted, seen
    checkpoint_events = [e for e in events if e["type"] == "checkpoint"]
    assert {e["id"] for e in checkpoint_events} == {checkpoint_id}
    assert all(e["attributes"]["kept"] == "yes" for e in checkpoint_events)  # the checkpoint's labels
    assert all(e["attributes"]["tier"] == "db" for e in events if e["type"] == "container")


def test_resumed_watchers_miss_nothing_across_a_migration(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "ev-mig", 8)
    start_a, start_b = cursor(a), cursor(b)
    first = Watcher(lab, a, start_a)
    migration = lab.migrate_popen(a, b, "ev-mig")
    try:
        first.until("migration", "start", "ev-mig")
    finally:
        first.stop()  # disconnected mid-way
    out, err = migration.communicate(timeout=120)
    assert migration.returncode == 0, err.decode()
    # resumed from the last cursor the first watcher saw: the rest, after the migration ended
    resumed = Watcher(lab, a, first.events[-1]["sequence"])
    on_target = Watcher(lab, b, start_b)
    try:
        resumed.until("migration", "completed", "ev-mig")
        on_target.until("migration", "resumed", "ev-mig")
    finally:
        resumed.stop()
        on_target.stop()

    seen = first.events + resumed.events
    journal = [e.to_json() for e in Journal(a.root).read(start_a)][:len(seen)]
    assert [e["sequence"] for e in seen] == [e["sequence"] for e in journal]  # none lost, none repeated
    assert seen == journal
    source = actions(seen, "ev-mig")
    for wanted in (["migration/start", "migration/frozen", "migration/completed"], ["container/remove"]):
        assert [s for s in source if s in wanted] == wanted, source
    completed = next(e for e in seen if e["action"] == "completed")
    assert completed["attributes"]["mode"] == "cold" and completed["attributes"]["role"] == "source"
    assert float(completed["attributes"]["frozen_ms"]) > 0
    target = actions(on_target.events, "ev-mig")
    assert target == ["container/restore", "container/start", "migration/resumed"], target
    migration_ids = {e["id"] for e in seen + on_target.events if e["type"] == "migration"}
    assert len(migration_ids) == 1  # both hosts name the one migration
