"""The page relay's zstd on a disk-less cold migration (issue 17; migrate/migration/page_relay.py).

Two hosts (network namespaces), daemons over TCP, real CRIU; a memhog whose memory is half text
(compressible) and half random. ``migrate --compress on`` sends the pages through the relays as
zstd: the memory's checksum is the same on the target and the result reports fewer bytes on the
wire than raw; ``--compress off`` sends them raw (CRIU's own connection, as before the relay).
Between mTLS daemons the relays do the TLS (the page-server connection opens with a TLS
ClientHello on the wire) and compression still works. A link cut mid-transfer with compression
on fails the migration and leaves the container running on the source only (exactly one copy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from migrate.api import MigrateOptions
from tests.integration.hosts import Hosts
from tests.integration.migrate_helpers import names_by_status
from tests.integration.migration_lab import Lab
from tests.integration.test_migrate_faults import cut_link_mid_transfer
from tests.integration.test_page_server_tls import CLIENT_HELLO, Sniffer, _is_tls_hello
from tests.integration.test_page_server_tls import Lab as TlsLab
from tests.integration.test_migrate_security import _pki
from tests.integration.workloads import MEMHOG_IMAGE, build_memhog, import_image, memhog_command, memhog_image_tar, wait_memhog_ready

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires("root", "netns", "criu", "pycriu", "busybox", "overlay"),
]

SIZE_MIB = 128  # above the disk-less threshold: the pages take the page server (and the relay)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab.create(tmp_path) as made:
        yield made


def _migrate(lab: Lab, source, target, name: str, compress: str) -> dict:  # noqa: ANN001
    r = lab.remote(source, ["migrate", name, lab.addr(target), "--compress", compress, "--json"])
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_compress_on_keeps_memory_and_packs_off_sends_raw(lab: Lab) -> None:
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "zhog", SIZE_MIB, text_percent=50)
    before = lab.report(a, "zhog")
    assert before is not None

    packed = _migrate(lab, a, b, "zhog", "on")
    after = lab.report(b, "zhog")
    assert after is not None and after[0] == before[0], "memory changed across the compressed migration"
    stats = packed["stats"]
    assert stats["phases_ms"]["page_compressed"] == 1.0, stats
    assert stats["bytes_on_wire"] < stats["raw_bytes"] * 0.8, stats  # half the memory is text
    assert stats["raw_bytes"] >= SIZE_MIB << 20, stats

    raw = _migrate(lab, b, a, "zhog", "off")
    back = lab.report(a, "zhog")
    assert back is not None and back[0] == before[0], "memory changed across the raw migration"
    rstats = raw["stats"]
    assert "page_compressed" not in rstats["phases_ms"], rstats  # no relay: CRIU's own connection
    # the pages raw; only the small images and the upper layer go zstd'ed in the archive, as before
    assert abs(rstats["bytes_on_wire"] - rstats["raw_bytes"]) <= rstats["raw_bytes"] * 0.01, rstats
    print(f"\n{SIZE_MIB} MiB half text: zstd {stats['bytes_on_wire'] >> 20} MiB on the wire for {stats['raw_bytes'] >> 20} "
          f"(link {stats['phases_ms']['page_link_mib_s']} MiB/s, zstd {stats['phases_ms']['page_zstd_mib_s']} MiB/s); "
          f"off: {rstats['bytes_on_wire'] >> 20} MiB for {rstats['raw_bytes'] >> 20}")
    assert names_by_status(a) == {"zhog": "running"} and names_by_status(b) == {}


def test_auto_on_loopback_sends_raw_through_the_relay(lab: Lab) -> None:
    # veths between namespaces move GiB/s: zstd would only slow the dump down
    a, b = lab.hosts[0], lab.hosts[1]
    lab.run_memhog(a, "ahog", SIZE_MIB, text_percent=50)
    before = lab.report(a, "ahog")
    result = _migrate(lab, a, b, "ahog", "auto")
    phases = result["stats"]["phases_ms"]
    assert phases["page_compressed"] == 0.0, phases
    assert phases["page_link_mib_s"] > 0 and phases["page_zstd_mib_s"] > 0, phases
    after = lab.report(b, "ahog")
    assert before is not None and after is not None and after[0] == before[0]


def test_link_cut_mid_transfer_with_compression_leaves_the_source_running(lab: Lab) -> None:
    cut_link_mid_transfer(lab, "--compress", "on", text_percent=50)


@pytest.fixture
def tls_lab(tmp_path: Path) -> Iterator[TlsLab]:
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("the memhog workload needs gcc")
    with Hosts(2) as hosts:
        made = TlsLab(hosts, _pki(tmp_path / "pki", [hosts[0], hosts[1]]))
        made.daemons(tls=True)
        made.a.cli(["image", "build-busybox", "busybox"], check=True)
        tar = memhog_image_tar(made.a.root, build_memhog(tmp_path / "bin"), tmp_path / "memhog.tar")
        import_image(made.a.root, MEMHOG_IMAGE, tar)
        yield made


def test_compression_between_mtls_daemons(tls_lab: TlsLab) -> None:
    lab = tls_lab
    r = lab.a.cli(["run", "-d", "--name", "thog", MEMHOG_IMAGE, *memhog_command(SIZE_MIB), "50"])
    assert r.returncode == 0, r.stderr.decode()
    digest = wait_memhog_ready(lab.a.root, "thog", timeout_s=120)[0]
    sniffer = Sniffer(lab.veth(lab.a))
    sniffer.start()
    try:
        with lab.engine(lab.a) as engine:
            result = engine.migrate("thog", MigrateOptions(dest=lab.addr[lab.b.letter], compress="on"))
    finally:
        capture = sniffer.stop()
    assert names_by_status(lab.a) == {} and names_by_status(lab.b) == {"thog": "running"}
    assert wait_memhog_ready(lab.b.root, "thog", timeout_s=60)[0] == digest, "memory changed across the mTLS migration"
    assert result.stats.phases_ms["page_compressed"] == 1.0, result.stats
    assert result.stats.bytes_on_wire < result.stats.raw_bytes * 0.8, result.stats
    conns = capture.connections(lab.a.address, lab.b.address)
    assert len(conns) == 1, f"expected one page-server connection, saw {conns}"
    _, sent, _ = conns[0]
    assert _is_tls_hello(sent.first, CLIENT_HELLO), f"the page relay's connection is not TLS: {sent.first.hex()}"
    assert sent.bytes() < SIZE_MIB << 20, f"{sent.bytes()} bytes went: the TLS stream was not compressed"
    lab.b.cli(["rm", "-f", "thog"])
