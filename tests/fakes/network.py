"""FakeNetwork: the ``runtime.network.Network`` protocol without root, for unit tests.

Addresses go through the real address pool (``runtime._ipam`` on ``paths.network``, so the lease
rules and messages are the real ones); namespaces are plain files under ``paths.netns``; links are
entries in ``links``. Every call is appended to ``calls`` as ``(method, container_id, ...)``.
Set ``fail[method] = exc`` to make the next call of that method raise ``exc`` (then the entry is
removed), to test callers' rollback paths.
"""

from __future__ import annotations

from pathlib import Path

from runtime import _ipam
from runtime.config import Paths
from runtime.errors import ContainerExists, NetworkError
from runtime.network import Endpoint, NetworkConfig, host_veth_name, mac_for_ip


class FakeNetwork:
    def __init__(self, paths: Paths, config: NetworkConfig | None = None, *, mode: str = "bridge") -> None:
        self.paths = paths
        self.config = config or NetworkConfig()
        self.mode = mode
        self.calls: list[tuple[object, ...]] = []
        self.links: dict[str, Endpoint] = {}  # host veth -> endpoint
        self.announced: list[tuple[str, str]] = []  # (container_id, ip)
        self.fail: dict[str, BaseException] = {}
        self._ipam = _ipam.Ipam(paths.network, self.config.subnet, self.config.bridge)

    def _call(self, method: str, *args: object) -> None:
        self.calls.append((method, *args))
        exc = self.fail.pop(method, None)
        if exc is not None:
            raise exc

    def create_netns(self, container_id: str, userns: Path | None = None) -> Path:
        self._call("create_netns", container_id)
        path = self.paths.netns / container_id
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise ContainerExists(f"network namespace of container {container_id} already exists at {path}")
        path.touch()
        return path

    def connect(self, container_id: str, netns: Path, ip: str | None = None, mac: str | None = None, *, up: bool = True) -> Endpoint | None:
        self._call("connect", container_id, netns, ip, mac)
        if self.mode == "none":
            return None
        if not Path(netns).exists():
            raise NetworkError(f"cannot connect container {container_id}: no network namespace at {netns}")
        veth = host_veth_name(self.paths.root, container_id)
        if veth in self.links:
            raise ContainerExists(f"cannot connect container {container_id}: veth {veth} exists")
        address, _new = self._ipam.lease(container_id, ip)
        ep = Endpoint(
            container_id=container_id,
            ip=address,
            prefix_len=self.config.prefix_len,
            gateway=self.config.gateway,
            mac=mac or mac_for_ip(address),
            host_veth=veth,
            bridge=self.config.bridge,
        )
        self.links[veth] = ep
        return ep

    def disconnect(self, container_id: str) -> None:
        self._call("disconnect", container_id)
        self.links.pop(host_veth_name(self.paths.root, container_id), None)
        self._ipam.release(container_id)

    def remove_netns(self, container_id: str) -> None:
        self._call("remove_netns", container_id)
        (self.paths.netns / container_id).unlink(missing_ok=True)

    def lease(self, container_id: str, ip: str | None = None, *, answer_later: bool = False) -> str:
        self._call("lease", container_id, ip)
        return self._ipam.lease(container_id, ip)[0]

    def confirm_lease(self, container_id: str) -> str | None:
        return self._ipam.leases().get(container_id)

    def release(self, container_id: str) -> None:
        self._call("release", container_id)
        self._ipam.release(container_id)

    def leases(self) -> dict[str, str]:
        return self._ipam.leases()

    def is_free(self, ip: str) -> bool:
        return self._ipam.is_free(ip)

    def endpoint(self, container_id: str) -> Endpoint | None:
        for ep in self.links.values():
            if ep.container_id == container_id:
                return ep
        return None

    def announce(self, container_id: str, netns: Path) -> None:
        self._call("announce", container_id, netns)
        ip = self._ipam.leases().get(container_id)
        if ip is None:
            raise NetworkError(f"cannot announce container {container_id}: it holds no address")
        self.announced.append((container_id, ip))
