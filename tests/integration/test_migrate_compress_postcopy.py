"""Post-copy's lazy pages through the page relay (issue 17; migrate/migration/lazy_relay.py).

Two hosts (network namespaces) whose links are shaped to 1 Gbit/s (tc tbf on each host's eth0, as
scripts/bench_link.py does for the benchmarks), daemons over TCP, real CRIU; a memhog whose memory
is half text (compressible) and half random. ``migrate --mode postcopy --compress on`` moves the
pages after the resume through the relays as zstd: the memory's checksum is the same on the
target, and fewer bytes crossed the link than the pages' size. ``--compress off`` back: the same
checksum again, CRIU's own connection (no relay in the stats), every page's byte on the wire.
``--compress auto`` compresses at 1 Gbit/s and steps aside at 10 Gbit/s (the probe's choice).
Between mTLS daemons (links unshaped) the relays do the TLS around the zstd bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from migrate.api import MigrateOptions
from tests.integration.migrate_helpers import names_by_status
from tests.integration.migration_lab import Lab
from tests.integration.test_migrate_compress import tls_lab  # noqa: F401  (the mTLS lab fixture)
from tests.integration.test_page_server_tls import CLIENT_HELLO, Sniffer, _is_tls_hello
from tests.integration.test_page_server_tls import Lab as TlsLab
from tests.integration.workloads import MEMHOG_IMAGE, memhog_command, wait_memhog_ready

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay", "lazy_pages"),
]

SIZE_MIB = 128
RATE = "1gbit"
BURST = "1250000"  # 10 ms at 1 Gbit/s (bench_link: never below two 64 KiB GSO segments)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab.create(tmp_path) as made:
        for h in made.hosts:
            h.run(["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", RATE, "burst", BURST, "latency", "50ms"])
        yield made


def _postcopy(lab: Lab, source, target, name: str, compress: str) -> dict:  # noqa: ANN001
    r = lab.remote(source, ["migrate", name, lab.addr(target), "--mode", "postcopy", "--compress", compress, "--json"])
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["mode"] == "postcopy", result
    return result  # type: ignore[no-any-return]


def test_postcopy_on_a_shaped_link_keeps_memory_compressed_or_not(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "lhog", SIZE_MIB, text_percent=50)
    before = lab.report(a, "lhog")
    assert before is not None

    packed = _postcopy(lab, a, b, "lhog", "on")
    after = lab.report(b, "lhog", timeout_s=60)
    assert after is not None and after[0] == before[0], "memory changed across the compressed post-copy migration"
    stats = packed["stats"]
    assert stats["phases_ms"]["page_compressed"] == 1.0, stats
    assert stats["phases_ms"]["page_frames"] == 1.0, stats  # both relays read frames: an answer on two threads
    pages = stats["phases_ms"]["page_raw_bytes"]
    assert pages >= SIZE_MIB << 20, stats  # every page went through the relay
    assert stats["phases_ms"]["page_wire_bytes"] < pages * 0.8, stats  # half the memory is text
    assert stats["bytes_on_wire"] < stats["raw_bytes"] * 0.8, stats

    raw = _postcopy(lab, b, a, "lhog", "off")
    back = lab.report(a, "lhog", timeout_s=60)
    assert back is not None and back[0] == before[0], "memory changed across the raw post-copy migration"
    rstats = raw["stats"]
    assert "page_compressed" not in rstats["phases_ms"], rstats  # no relay: the lazy-pages daemon dials CRIU
    assert rstats["bytes_on_wire"] >= SIZE_MIB << 20, rstats
    print(f"\n{SIZE_MIB} MiB half text, post-copy at {RATE}: zstd {stats['bytes_on_wire'] >> 20} MiB on the wire "
          f"(total {stats['total_ms']:.0f} ms, last page {stats['phases_ms']['last_page']:.0f} ms after the resume); "
          f"off: {rstats['bytes_on_wire'] >> 20} MiB (total {rstats['total_ms']:.0f} ms)")
    assert names_by_status(a) == {"lhog": "running"} and names_by_status(b) == {}



def test_postcopy_auto_compresses_at_1gbit_and_steps_aside_at_10gbit(lab: Lab) -> None:
    """``--compress auto`` lets the source's probe decide before the freeze: zstd at 1 Gbit/s;
    at 10 Gbit/s raw, and then the relays step aside (the lazy-pages daemon dials CRIU itself)."""
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "ahog", SIZE_MIB, text_percent=50)
    before = lab.report(a, "ahog")
    assert before is not None

    slow = _postcopy(lab, a, b, "ahog", "auto")
    after = lab.report(b, "ahog", timeout_s=60)
    assert after is not None and after[0] == before[0], "memory changed across post-copy with auto at 1 Gbit/s"
    stats = slow["stats"]
    assert stats["phases_ms"]["page_compressed"] == 1.0, stats
    assert stats["bytes_on_wire"] < stats["raw_bytes"] * 0.8, stats

    for h in lab.hosts:
        h.run(["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "10gbit", "burst", "12500000",
               "latency", "50ms"])
    fast = _postcopy(lab, b, a, "ahog", "auto")
    back = lab.report(a, "ahog", timeout_s=60)
    assert back is not None and back[0] == before[0], "memory changed across post-copy with auto at 10 Gbit/s"
    fstats = fast["stats"]
    assert fstats["phases_ms"]["page_compressed"] == 0.0, fstats  # probed, chose raw
    assert "page_wire_bytes" not in fstats["phases_ms"], fstats  # no relay pumped: CRIU's own connection
    assert fstats["bytes_on_wire"] >= SIZE_MIB << 20, fstats
    assert names_by_status(a) == {"ahog": "running"} and names_by_status(b) == {}

def test_postcopy_compression_between_mtls_daemons(tls_lab: TlsLab) -> None:
    """With mTLS the relays do the TLS around the zstd bytes (CRIU talks plain on both sides): the
    one page-server connection is dialed by the source this time (to the target's relay), opens
    with a ClientHello, and carries fewer bytes than the pages."""
    lab = tls_lab
    r = lab.a.cli(["run", "-d", "--name", "tlhog", MEMHOG_IMAGE, *memhog_command(SIZE_MIB), "50"])
    assert r.returncode == 0, r.stderr.decode()
    digest = wait_memhog_ready(lab.a.root, "tlhog", timeout_s=120)[0]
    sniffer = Sniffer(lab.veth(lab.a))
    sniffer.start()
    try:
        with lab.engine(lab.a) as engine:
            result = engine.migrate("tlhog", MigrateOptions(dest=lab.addr[lab.b.letter], mode="postcopy", compress="on"))
    finally:
        capture = sniffer.stop()
    assert result.mode == "postcopy"
    assert names_by_status(lab.a) == {} and names_by_status(lab.b) == {"tlhog": "running"}
    assert wait_memhog_ready(lab.b.root, "tlhog", timeout_s=60)[0] == digest, "memory changed across the mTLS post-copy"
    assert result.stats.phases_ms["page_compressed"] == 1.0, result.stats
    conns = capture.connections(lab.a.address, lab.b.address)
    assert len(conns) == 1, f"expected one page-server connection, saw {conns}"
    (client, _, server, _), hello, answer = conns[0]
    assert (client, server) == (lab.a.address, lab.b.address)  # the source dials the target's relay
    assert _is_tls_hello(hello.first, CLIENT_HELLO), f"the lazy page relay's connection is not TLS: {hello.first.hex()}"
    assert hello.bytes() < (SIZE_MIB << 20) * 0.8, f"{hello.bytes()} bytes went: the TLS stream was not compressed"
    lab.b.cli(["rm", "-f", "tlhog"])
