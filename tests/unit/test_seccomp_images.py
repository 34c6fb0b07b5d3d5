"""runtime.seccomp.check_image_filters on hand-built CRIU images: which filters the dumped
processes carry, not only that they carry one.

The images are framed and encoded as CRIU 4.1.1 writes them (the field numbers measured on a real
dump, ../shared/CRIU-NOTES.md): core-<tid>.img holds core_entry{tc=3 {old_seccomp_mode=11,
old_seccomp_filter=12}, thread_core=5 {seccomp_mode=11, seccomp_filter=12}}; seccomp.img holds one
seccomp_entry{repeated seccomp_filter=1 {filter=1, prev=2, flags=3}}, each task's chain newest
first, the thread naming its oldest filter and ``prev`` the one installed after it. The expected
program is compiled by libseccomp for a small "default" profile (PYMIGRATE_SECCOMP_PROFILE).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from runtime import seccomp
from runtime.errors import InvalidArgument, InvalidSpec, Unsupported

PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "syscalls": [
        {"names": ["read", "write", "exit_group", "nanosleep"], "action": "SCMP_ACT_ALLOW"},
        # capability-dependent, as in the real default profile: the container set holds CAP_SYS_CHROOT
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
    ],
}
ALLOW_ALL = b"\x06\x00\x00\x00\x00\x00\xff\x7f"  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
EXTRA = b"\x20\x00\x00\x00\x00\x00\x00\x00" + ALLOW_ALL  # ld [0]; ret ALLOW: a workload's own filter


@pytest.fixture
def program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The "default" profile's program on this host for the container capability set."""
    try:
        seccomp.library_version()
    except Unsupported as exc:
        pytest.skip(str(exc))
    from runtime.capabilities import names

    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    monkeypatch.setenv(seccomp.PROFILE_ENV, str(path))
    compiled = seccomp.filter_for("default", None, names())
    assert compiled is not None
    return compiled


# -- encoders ----------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def vfield(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def bfield(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def framed(magic: int, *entries: bytes) -> bytes:
    head = seccomp.IMG_COMMON_MAGIC.to_bytes(4, "little") + magic.to_bytes(4, "little")
    return head + b"".join(len(e).to_bytes(4, "little") + e for e in entries)


def core_image(mode: int | None, index: int | None = None, *, old_mode: int | None = None, old_index: int | None = None,
               task_state: int = 1) -> bytes:
    """core_entry{mtype=1, tc{task_state, [old_seccomp_*]}, thread_core{futex_rla=0, [seccomp_*]}}."""
    thread = vfield(1, 0) + (b"" if mode is None else vfield(11, mode)) + (b"" if index is None else vfield(12, index))
    task = vfield(1, task_state) + (b"" if old_mode is None else vfield(11, old_mode)) + (b"" if old_index is None else vfield(12, old_index))
    return framed(seccomp.CORE_MAGIC, vfield(1, 1) + bfield(3, task) + bfield(5, thread))


def seccomp_image(*filters: tuple[bytes, int | None]) -> bytes:
    """seccomp_entry{seccomp_filters: (program, prev) each, flags=1 as CRIU 4.1.1 writes them}."""
    body = b"".join(bfield(1, bfield(1, prog) + (b"" if prev is None else vfield(2, prev)) + vfield(3, 1)) for prog, prev in filters)
    return framed(seccomp.SECCOMP_MAGIC, body)


def pstree_image(processes: dict[int, list[int]]) -> bytes:
    """pstree.img: one pstree_entry{pid, ppid, pgid, sid, threads...} per process."""
    entries = [vfield(1, pid) + vfield(2, 0) + vfield(3, pid) + vfield(4, pid) + b"".join(vfield(5, t) for t in threads)
               for pid, threads in processes.items()]
    return framed(seccomp.PSTREE_MAGIC, *entries)


def write(images: Path, files: dict[str, bytes]) -> Path:
    images.mkdir(exist_ok=True)
    for name, data in files.items():
        (images / name).write_bytes(data)
    return images


# -- which filters --------------------------------------------------------------------------------------


def test_a_chain_of_just_the_profile_passes(tmp_path: Path, program: bytes) -> None:
    """Two processes, one filter each: the layout of a genuine dump of a container."""
    images = write(tmp_path / "images", {
        "pstree.img": pstree_image({1: [1], 3: [3]}),
        "core-1.img": core_image(2, 0),
        "core-3.img": core_image(2, 1),
        "seccomp.img": seccomp_image((program, None), (program, None)),
    })
    seccomp.check_image_filters(images, "default")
    assert [f.program for f in seccomp.image_filters(images)] == [program, program]


def test_a_zombie_needs_no_filter(tmp_path: Path, program: bytes) -> None:
    """An exited child its parent has not reaped: CRIU writes its core with task_state 2 (dead)
    and no seccomp fields (a real dump of `sh -c "sleep 0 & exec sleep 1000"`); it is restored
    dead and runs nothing, so it must not make a container unmovable. A live process without a
    filter still is refused."""
    images = write(tmp_path / "images", {
        "pstree.img": pstree_image({1: [1], 2: [2]}),
        "core-1.img": core_image(2, 0),
        "core-2.img": core_image(None, task_state=seccomp.TASK_DEAD),
        "seccomp.img": seccomp_image((program, None)),
    })
    seccomp.check_image_filters(images, "default")
    write(images, {"core-2.img": core_image(None)})
    with pytest.raises(InvalidSpec, match="core-2.img describe processes without a seccomp filter"):
        seccomp.check_image_filters(images, "default")


def test_extra_filters_in_a_chain_pass(tmp_path: Path, program: bytes) -> None:
    """Process 2 added two filters of its own on top of the container's (CRIU: the newest first,
    no prev; each older one's prev names the one before it; the core names the oldest)."""
    images = write(tmp_path / "images", {
        "pstree.img": pstree_image({1: [1], 2: [2]}),
        "core-1.img": core_image(2, 0),
        "core-2.img": core_image(2, 3),
        "seccomp.img": seccomp_image((program, None), (EXTRA, None), (ALLOW_ALL, 1), (program, 2)),
    })
    seccomp.check_image_filters(images, "default")
    # the profile's program anywhere in the chain will do, not only as its root
    write(images, {"seccomp.img": seccomp_image((program, None), (program, None), (ALLOW_ALL, 1), (EXTRA, 2))})
    seccomp.check_image_filters(images, "default")


def test_a_permissive_filter_is_refused(tmp_path: Path, program: bytes) -> None:
    images = write(tmp_path / "images", {
        "pstree.img": pstree_image({1: [1], 3: [3]}),
        "core-1.img": core_image(2, 0),
        "core-3.img": core_image(2, 1),
        "seccomp.img": seccomp_image((program, None), (ALLOW_ALL, None)),
    })
    with pytest.raises(InvalidSpec, match=r"core-3.img \(pid 3\).*not the container's profile \(seccomp default\)") as err:
        seccomp.check_image_filters(images, "default")
    assert err.value.field == "seccomp"
    assert "core-1.img" not in err.value.message
    assert "--security-opt seccomp=unconfined" in (err.value.hint or "") and "libseccomp" in (err.value.hint or "")
    seccomp.check_image_filters(images, "unconfined")  # the importer's consent


def test_the_capability_dependent_program_must_match(tmp_path: Path, program: bytes) -> None:
    """The same profile compiled for other capabilities (here with CAP_SYS_ADMIN: bpf allowed) is
    another program: the container's capability set is what the runtime compiles for."""
    from runtime.capabilities import names

    wider = seccomp.filter_for("default", None, names() | {"CAP_SYS_ADMIN"})
    assert wider is not None and wider != program
    images = write(tmp_path / "images", {"core-1.img": core_image(2, 0), "seccomp.img": seccomp_image((wider, None))})
    with pytest.raises(InvalidSpec, match="not the container's profile"):
        seccomp.check_image_filters(images, "default")
    seccomp.check_image_filters(images, "default", caps=names() | {"CAP_SYS_ADMIN"})


def test_a_custom_profile_is_compared_with_its_own_program(tmp_path: Path, program: bytes) -> None:
    text = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]})
    from runtime.capabilities import names

    custom = seccomp.filter_for("custom", text, names())
    images = write(tmp_path / "images", {"core-1.img": core_image(2, 0), "seccomp.img": seccomp_image((custom, None))})
    seccomp.check_image_filters(images, "custom", text, cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidSpec, match=r"not the container's profile \(seccomp default\)"):
        seccomp.check_image_filters(images, "default")
    other = text.replace("mkdir", "rmdir")
    with pytest.raises(InvalidSpec, match=r"not the container's profile \(seccomp custom\)"):
        seccomp.check_image_filters(images, "custom", other)
    with pytest.raises(InvalidSpec, match="no profile"):
        seccomp.check_image_filters(images, "custom", None)


def test_the_deprecated_task_core_fields_are_checked_too(tmp_path: Path, program: bytes) -> None:
    """CRIU 4.1.1 lets task_core's old_seccomp_mode/old_seccomp_filter replace the main thread's
    thread_core fields: a genuine-looking thread_core must not hide them."""
    good = seccomp_image((program, None), (ALLOW_ALL, None))
    images = write(tmp_path / "images", {"pstree.img": pstree_image({1: [1]}), "core-1.img": core_image(2, 0, old_index=1), "seccomp.img": good})
    with pytest.raises(InvalidSpec, match="not the container's profile"):
        seccomp.check_image_filters(images, "default")
    write(images, {"core-1.img": core_image(2, 0, old_mode=0)})
    with pytest.raises(InvalidSpec, match="describe processes without a seccomp filter"):
        seccomp.check_image_filters(images, "default")
    write(images, {"core-1.img": core_image(2, 1, old_mode=2, old_index=0)})  # the reading CRIU uses is fine...
    with pytest.raises(InvalidSpec, match="not the container's profile"):  # ...but a thread's own index is checked as well
        seccomp.check_image_filters(images, "default")
    write(images, {"core-1.img": core_image(0, None, old_mode=2, old_index=0)})
    seccomp.check_image_filters(images, "default")


def test_other_threads_are_checked_when_their_core_names_a_filter(tmp_path: Path, program: bytes) -> None:
    """CRIU 4.1.1 writes no seccomp field into a process's other threads' cores (measured); one
    that has them gets that chain installed, so it is checked like the main thread's."""
    images = write(tmp_path / "images", {
        "pstree.img": pstree_image({1: [1, 2, 3]}),
        "core-1.img": core_image(2, 0),
        "core-2.img": core_image(None),
        "core-3.img": core_image(None),
        "seccomp.img": seccomp_image((program, None), (ALLOW_ALL, None)),
    })
    seccomp.check_image_filters(images, "default")
    write(images, {"core-3.img": core_image(2, 1)})
    with pytest.raises(InvalidSpec, match="core-3.img"):
        seccomp.check_image_filters(images, "default")


# -- malformed, inconsistent and oversized images: typed errors ------------------------------------------


def test_a_missing_seccomp_image_is_refused(tmp_path: Path, program: bytes) -> None:
    images = write(tmp_path / "images", {"core-1.img": core_image(2, 0)})
    with pytest.raises(InvalidArgument, match="no seccomp.img, but core-1.img"):
        seccomp.check_image_filters(images, "default")
    write(images, {"seccomp.img": framed(seccomp.SECCOMP_MAGIC)})  # the magic and no entry: no filters
    with pytest.raises(InvalidArgument, match="names seccomp filter 0, but seccomp.img holds 0"):
        seccomp.check_image_filters(images, "default")


@pytest.mark.parametrize(
    ("core", "filters", "message"),
    [
        (core_image(2, 5), [(b"", None)], "names seccomp filter 5, but seccomp.img holds 1"),
        (core_image(2, 1 << 40), [(b"", None)], "names seccomp filter 1099511627776"),
        (core_image(2, 0), [(b"", 7)], "names seccomp filter 7, but seccomp.img holds 1"),
        (core_image(2, 0), [(ALLOW_ALL, 0)], "loops back to filter 0"),
        (core_image(2, 0), [(ALLOW_ALL, 1), (EXTRA, 2), (ALLOW_ALL, 0)], "loops back to filter 0"),
        (core_image(2, 0), [(EXTRA, 1), (ALLOW_ALL, 1)], "loops back to filter 1"),
    ],
)
def test_bad_indexes_and_loops_are_typed_errors(tmp_path: Path, program: bytes, core: bytes, filters: list, message: str) -> None:
    filters = [(prog or program, prev) for prog, prev in filters]
    images = write(tmp_path / "images", {"core-1.img": core, "seccomp.img": seccomp_image(*filters)})
    with pytest.raises(InvalidArgument, match=message) as err:
        seccomp.check_image_filters(images, "default")
    assert not isinstance(err.value, InvalidSpec)  # malformed, not "another profile"


def test_a_chain_longer_than_the_kernel_allows_is_refused(tmp_path: Path, program: bytes) -> None:
    n = seccomp.MAX_CHAIN_FILTERS + 1
    filters = [(ALLOW_ALL, None)] + [(ALLOW_ALL, i) for i in range(n - 1)]  # CRIU's layout: the core names the last
    images = write(tmp_path / "images", {"core-1.img": core_image(2, n - 1), "seccomp.img": seccomp_image(*filters)})
    with pytest.raises(InvalidArgument, match="longer than the kernel allows"):
        seccomp.check_image_filters(images, "default")
    big = b"\x06\x00\x00\x00\x00\x00\xff\x7f" * seccomp.BPF_MAXINSNS  # 8 of these: more instructions than a path takes
    filters = [(big, None)] + [(big, i) for i in range(8)]
    write(images, {"core-1.img": core_image(2, 8), "seccomp.img": seccomp_image(*filters)})
    with pytest.raises(InvalidArgument, match="32768 instructions"):
        seccomp.check_image_filters(images, "default")


def test_many_threads_sharing_a_long_chain_walk_it_once(tmp_path: Path, program: bytes) -> None:
    """Memoized: 2,000 processes on one 6,000-filter chain is 6,000 steps, not 12 million."""
    n = 6000
    filters = [(program, None)] + [(ALLOW_ALL, i) for i in range(n - 1)]
    files = {f"core-{pid}.img": core_image(2, n - 1) for pid in range(1, 2001)}
    images = write(tmp_path / "images", {**files, "seccomp.img": seccomp_image(*filters)})
    chains = seccomp._Chains(seccomp.image_filters(images), program)
    assert all(chains.holds(n - 1, f"core-{pid}.img") for pid in range(1, 2001))
    assert len(chains._known) == n
    seccomp.check_image_filters(images, "default")


def filt(program: bytes, extra: bytes = b"") -> bytes:
    return bfield(1, bfield(1, program) + extra)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a CRIU seccomp image"),
        (framed(seccomp.CORE_MAGIC, b""), "not a CRIU seccomp image"),
        (framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL))[:-3], "truncated"),
        (framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL[:5])), "not a BPF program"),
        (framed(seccomp.SECCOMP_MAGIC, filt(b"")), "not a BPF program"),
        (framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL * (seccomp.BPF_MAXINSNS + 1))), "not a BPF program"),
        (framed(seccomp.SECCOMP_MAGIC, bfield(1, vfield(2, 0))), "not a BPF program"),  # no program at all
        (framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL, bfield(1, ALLOW_ALL))), "program more than once"),
        (framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL, vfield(2, 0) + vfield(2, 1))), "prev more than once"),
        (framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL, bfield(2, b"\x00"))), "prev has the wrong wire type"),
        (framed(seccomp.SECCOMP_MAGIC, vfield(1, 3)), "seccomp filter 0 has the wrong wire type"),
        (framed(seccomp.SECCOMP_MAGIC, b"\x0a\xff\xff\xff\xff\x0f"), "malformed entry"),
        (framed(seccomp.SECCOMP_MAGIC, b"\x0f\x00"), "malformed entry"),  # wire type 7
    ],
)
def test_malformed_seccomp_images_are_typed_errors(tmp_path: Path, program: bytes, data: bytes, message: str) -> None:
    images = write(tmp_path / "images", {"core-1.img": core_image(2, 0), "seccomp.img": data})
    with pytest.raises(InvalidArgument, match=message) as err:
        seccomp.check_image_filters(images, "default")
    assert "seccomp.img" in err.value.message


def test_too_many_filters_and_oversized_images_are_refused(tmp_path: Path, program: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    images = write(tmp_path / "images", {"core-1.img": core_image(2, 0)})
    write(images, {"seccomp.img": framed(seccomp.SECCOMP_MAGIC, filt(ALLOW_ALL) * (seccomp.MAX_IMAGE_FILTERS + 1))})
    with pytest.raises(InvalidArgument, match="more than 65536 fields"):
        seccomp.check_image_filters(images, "default")
    monkeypatch.setattr(seccomp, "MAX_SECCOMP_IMAGE_BYTES", len(program))
    write(images, {"seccomp.img": seccomp_image((program, None))})
    with pytest.raises(InvalidArgument, match=f"seccomp.img is larger than {len(program)} bytes"):
        seccomp.check_image_filters(images, "default")


def test_random_damage_is_always_a_typed_error_or_a_verdict(tmp_path: Path, program: bytes) -> None:
    """Truncations and flipped bytes of a genuine-looking set: never an untyped exception."""
    genuine = {
        "pstree.img": pstree_image({1: [1], 2: [2]}),
        "core-1.img": core_image(2, 0),
        "core-2.img": core_image(2, 3),
        "seccomp.img": seccomp_image((program, None), (EXTRA, None), (ALLOW_ALL, 1), (program, 2)),
    }
    images = write(tmp_path / "images", genuine)
    seccomp.check_image_filters(images, "default")
    rng = random.Random(1234)
    for _ in range(400):
        name = rng.choice(sorted(genuine))
        data = bytearray(genuine[name])
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        write(images, {**genuine, name: bytes(data)})
        try:
            seccomp.check_image_filters(images, "default")
        except InvalidArgument:
            pass


# -- the mode check (kept) ----------------------------------------------------------------------------


def test_image_filter_modes_and_the_check(tmp_path: Path, program: bytes) -> None:
    images = write(tmp_path / "images", {"core-1.img": core_image(2, 0), "core-7.img": core_image(2, 1),
                                         "seccomp.img": seccomp_image((program, None), (program, None))})
    assert seccomp.image_filter_modes(images) == {"core-1.img": 2, "core-7.img": 2}
    seccomp.check_image_filters(images, "default")
    write(images, {"core-9.img": core_image(None)})  # a thread dumped without a filter
    with pytest.raises(InvalidSpec, match="core-9.img describe processes without a seccomp filter") as err:
        seccomp.check_image_filters(images, "default")
    assert err.value.field == "seccomp" and "seccomp=unconfined" in (err.value.hint or "")
    seccomp.check_image_filters(images, "unconfined")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 12, core_image(2, 0)[:-3], core_image(2, 0)[:12] + b"\xff" * 40,
     core_image(2, 0)[:8] + (3).to_bytes(4, "little") + b"\x2a\x09\x08",
     framed(seccomp.CORE_MAGIC, bfield(5, vfield(11, 2)) + bfield(5, vfield(12, 1))),  # thread_core twice
     framed(seccomp.CORE_MAGIC, bfield(5, vfield(11, 2) + vfield(11, 0))),  # seccomp_mode twice
     framed(seccomp.CORE_MAGIC, vfield(5, 2)),  # thread_core as a varint
     framed(seccomp.CORE_MAGIC)],
)
def test_malformed_core_images_are_typed_errors(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "core-1.img").write_bytes(data)
    with pytest.raises(InvalidArgument, match="core-1.img"):
        seccomp.image_filter_modes(tmp_path)


def test_other_threads_inherit_their_processes_filter(tmp_path: Path, program: bytes) -> None:
    """CRIU 4.1.1 writes the seccomp mode into the main thread's core only; a multi-threaded
    server (redis, node, python) must not be refused for its other threads' bare cores."""
    images = write(tmp_path / "images", {
        "pstree.img": pstree_image({1: [1, 2, 3], 9: [9]}),
        "core-1.img": core_image(2, 0),
        "core-2.img": core_image(None),
        "core-3.img": core_image(None),
        "core-9.img": core_image(2, 1),
        "seccomp.img": seccomp_image((program, None), (program, None)),
    })
    assert seccomp.process_leaders(images) == {1, 9}
    seccomp.check_image_filters(images, "default")
    write(images, {"core-9.img": core_image(None)})  # a whole process without a filter
    with pytest.raises(InvalidSpec, match="core-9.img"):
        seccomp.check_image_filters(images, "default")


def test_a_malformed_pstree_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "pstree.img").write_bytes(pstree_image({1: [1]})[:-2])
    with pytest.raises(InvalidArgument, match="pstree.img"):
        seccomp.process_leaders(tmp_path)
