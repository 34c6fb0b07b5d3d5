"""``readdressed``: a restore under a new address drops the recorded MAC (the restore derives the
new address's), the same address keeps it (issue 13: a copy beside its original had its MAC)."""

from __future__ import annotations

from runtime.network import mac_for_ip
from runtime.spec import ContainerSpec, readdressed

SPEC = ContainerSpec(container_id="c" * 32, name="lim", image="busybox", image_digest="sha256:" + "0" * 64,
                     command=("sh",), ip="10.77.0.5", mac=mac_for_ip("10.77.0.5"))


def test_a_new_address_drops_the_recorded_mac() -> None:
    moved = readdressed(SPEC, "10.77.0.60")
    assert (moved.ip, moved.mac) == ("10.77.0.60", None)
    assert moved.container_id == SPEC.container_id and moved.name == SPEC.name


def test_the_same_address_or_none_keeps_the_spec() -> None:
    assert readdressed(SPEC, "10.77.0.5") is SPEC
    assert readdressed(SPEC, None) is SPEC
    assert readdressed(SPEC, "") is SPEC


def test_a_custom_mac_stays_while_the_address_does() -> None:
    custom = ContainerSpec(**{**SPEC.to_dict(), "command": ("sh",), "mac": "02:00:00:00:00:01"})
    assert readdressed(custom, "10.77.0.5").mac == "02:00:00:00:00:01"
    assert readdressed(custom, "10.77.0.6").mac is None
