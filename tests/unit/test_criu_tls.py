"""TLS on CRIU's page-server connections (runtime/criu.py ``CriuTls``): the flags given to
``criu page-server`` / ``criu lazy-pages`` and the criu_opts fields of an RPC dump.

No CRIU here: the "binary" is a small script that records what it was given and answers like CRIU
(the page-server/lazy-pages one writes its ready byte to ``--status-fd``; the swrk one reads the
RPC request from its socket and answers success).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from runtime.criu import CriuTls, DumpRequest, PageServer, SwrkCriu, start_lazy_pages, start_page_server

TLS = CriuTls(cacert=Path("/pki/ca.pem"), cert=Path("/pki/host.pem"), key=Path("/pki/host.key"))

# records argv as JSON, then writes one byte to the fd after --status-fd (CRIU's "ready")
_CLI_FAKE = """#!{python}
import json, os, sys
argv = sys.argv[1:]
with open({out!r}, "w") as f:
    json.dump(argv, f)
os.write(int(argv[argv.index("--status-fd") + 1]), b"\\0")
"""

# ``criu swrk FD``: reads one criu_req, stores its opts' TLS and page-server fields, answers success
_SWRK_FAKE = """#!{python}
import json, socket, sys
sys.path[:0] = {path!r}
from runtime.criu import _rpc
rpc = _rpc()
sock = socket.socket(fileno=int(sys.argv[2]))
req = rpc.criu_req()
req.ParseFromString(sock.recv(1 << 20))
o = req.opts
fields = ["tls", "tls_cacert", "tls_cert", "tls_key", "tls_cacrl", "tls_no_cn_verify", "lazy_pages"]
out = {{f: getattr(o, f) for f in fields if o.HasField(f)}}
if o.HasField("ps"):
    out["ps"] = [o.ps.address, o.ps.port] + ([o.ps.fd] if o.ps.HasField("fd") else [])
with open({out!r}, "w") as f:
    json.dump(out, f)
resp = rpc.criu_resp()
resp.type = req.type
resp.success = True
sock.send(resp.SerializeToString())
"""


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_cli_flags() -> None:
    assert TLS.cli_args() == ["--tls", "--tls-cacert", "/pki/ca.pem", "--tls-cert", "/pki/host.pem", "--tls-key", "/pki/host.key"]
    crl = CriuTls(TLS.cacert, TLS.cert, TLS.key, cacrl=Path("/pki/crl.pem"), no_cn_verify=True)
    assert crl.cli_args()[-3:] == ["--tls-cacrl", "/pki/crl.pem", "--tls-no-cn-verify"]


def test_listener_checks_the_chain_not_the_name() -> None:
    listener = TLS.for_listener()
    assert listener.no_cn_verify and (listener.cacert, listener.cert, listener.key) == (TLS.cacert, TLS.cert, TLS.key)
    assert listener.for_listener() is listener
    assert not TLS.no_cn_verify  # unchanged


def test_page_server_listens_with_tls_and_no_name_check(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    binary = _script(tmp_path / "criu", _CLI_FAKE.format(python=sys.executable, out=str(out)))
    proc = start_page_server(tmp_path, "10.0.0.2", 4321, binary=binary, tls=TLS)
    assert proc.wait(10) == 0
    argv = json.loads(out.read_text())
    assert argv[:5] == ["page-server", "--address", "10.0.0.2", "--port", "4321"]
    i = argv.index("--tls")
    assert argv[i : i + 8] == [*TLS.cli_args(), "--tls-no-cn-verify"]


def test_lazy_pages_connects_with_tls_and_checks_the_name(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    binary = _script(tmp_path / "criu", _CLI_FAKE.format(python=sys.executable, out=str(out)))
    proc = start_lazy_pages(tmp_path, tmp_path, PageServer("10.0.0.1", 1234), binary=binary, tls=TLS)
    assert proc.wait(10) == 0
    argv = json.loads(out.read_text())
    assert argv[:6] == ["lazy-pages", "--page-server", "--address", "10.0.0.1", "--port", "1234"]
    assert "--tls" in argv and "--tls-no-cn-verify" not in argv
    assert argv[argv.index("--tls-key") + 1] == "/pki/host.key"


def test_without_tls_no_tls_flags(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    binary = _script(tmp_path / "criu", _CLI_FAKE.format(python=sys.executable, out=str(out)))
    start_page_server(tmp_path, "10.0.0.2", 4321, binary=binary).wait(10)
    assert not any(a.startswith("--tls") for a in json.loads(out.read_text()))


def _swrk(tmp_path: Path) -> tuple[str, Path]:
    import importlib.util

    if importlib.util.find_spec("pycriu") is None:  # found, not imported: other tests see no side effect
        pytest.skip("pycriu is not installed")
    out = tmp_path / "opts.json"
    repo = str(Path(__file__).resolve().parents[2])
    return _script(tmp_path / "criu", _SWRK_FAKE.format(python=sys.executable, path=[repo], out=str(out))), out


def _dump(criu: SwrkCriu, tmp_path: Path, **kwargs: object) -> dict:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    criu.dump(DumpRequest(pid=os.getpid(), images_dir=images, **kwargs))  # type: ignore[arg-type]
    return json.loads((tmp_path / "opts.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("how", "lazy", "expect_no_cn"),
    [("request", False, False), ("default", False, False), ("request", True, True), ("default", True, True)],
)
def test_rpc_dump_fields(tmp_path: Path, how: str, lazy: bool, expect_no_cn: bool) -> None:
    binary, _ = _swrk(tmp_path)
    criu = SwrkCriu(binary, page_server_tls=TLS if how == "default" else None)
    opts = _dump(criu, tmp_path, page_server=PageServer("10.0.0.2", 4321), lazy_pages=lazy,
                 tls=TLS if how == "request" else None)
    assert opts["tls"] is True
    assert (opts["tls_cacert"], opts["tls_cert"], opts["tls_key"]) == ("/pki/ca.pem", "/pki/host.pem", "/pki/host.key")
    # the dump that connects (disk-less) checks the server's name; a lazy dump listens: chain only
    assert opts.get("tls_no_cn_verify", False) is expect_no_cn
    assert "tls_cacrl" not in opts


def test_rpc_dump_without_a_page_server_has_no_tls(tmp_path: Path) -> None:
    binary, _ = _swrk(tmp_path)
    opts = _dump(SwrkCriu(binary, page_server_tls=TLS), tmp_path)
    assert "tls" not in opts and "ps" not in opts
    opts = _dump(SwrkCriu(binary), tmp_path, page_server=PageServer("10.0.0.2", 4321))
    assert "tls" not in opts and opts["ps"] == ["10.0.0.2", 4321]


def test_engine_uses_the_daemon_tls_for_page_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.engine import LocalEngine, PeerConfig
    from migrate.remote.tls import TlsConfig

    monkeypatch.chdir(tmp_path)
    tls = TlsConfig(cert=Path("host.pem"), key=Path("host.key"), ca=Path("ca.pem"))
    engine = LocalEngine(tmp_path / "root", peer=PeerConfig(tls=tls))
    # disk-less cold migration is on for TLS daemons too (its connection uses TLS)
    assert engine._page_server_address("10.0.0.2:7070") == "10.0.0.2"
    assert engine._page_server_address("unix:/run/x.sock") is None
    assert engine._page_server_address("ssh://root@10.0.0.2") is None
    got = engine._page_server_tls()
    # absolute: CRIU may run with another working directory
    assert got == CriuTls(cacert=tmp_path / "ca.pem", cert=tmp_path / "host.pem", key=tmp_path / "host.key")
    # gRPC's server-name override cannot be given to CRIU: then the chain alone is checked
    named = LocalEngine(tmp_path / "root", peer=PeerConfig(tls=TlsConfig(tls.cert, tls.key, tls.ca, server_name="db-1")))
    assert named._page_server_tls().no_cn_verify
    assert LocalEngine(tmp_path / "root", peer=PeerConfig(insecure=True))._page_server_tls() is None


def test_tls_goes_with_a_passed_page_server_socket(tmp_path: Path) -> None:
    """A socket we connected (ps.fd: with TCP_USER_TIMEOUT and keepalive) is handed to CRIU with
    the TLS options: our CRIU patch (scripts/criu-patches/4.1.1-page-server-socket.patch) runs the
    TLS setup on it, which stock 4.1.1 skipped."""
    import socket

    binary, _ = _swrk(tmp_path)
    a, b = socket.socketpair()
    fd = a.fileno()
    try:
        opts = _dump(SwrkCriu(binary, page_server_tls=TLS), tmp_path, page_server=PageServer("10.0.0.2", 4321, fd=fd))
    finally:
        a.close()
        b.close()
    assert opts["ps"] == ["10.0.0.2", 4321, fd]
    assert opts["tls"] is True
    assert (opts["tls_cacert"], opts["tls_cert"], opts["tls_key"]) == ("/pki/ca.pem", "/pki/host.pem", "/pki/host.key")
