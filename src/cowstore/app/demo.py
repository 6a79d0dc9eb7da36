"""`cowstore demo` / `make demo`: the copy-on-write claims of "Deep dive into Docker storage drivers", measured here.

It builds a real two-layer image from Debian's static busybox as a `docker save`
archive, loads it into a fresh store, creates and mounts many containers while timing
each and measuring the disk each adds, then shows copy-on-write isolation, `diff`,
`commit`, and the committed file read (and run) through a second container.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence

from cowstore.digest import sha256_bytes
from cowstore.drivers.btrfs import allocation
from cowstore.errors import NotFound
from cowstore.host import fsutil, mounts
from cowstore.images import load
from cowstore.images.config import host_architecture, now_rfc3339
from cowstore.store import Store
from cowstore.units import human_size

BUSYBOX = pathlib.Path("/bin/busybox")
CLAIM_SECONDS = 0.1
CLAIM_BYTES = 1_000_000
MTIME = 1_700_000_000
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


class _Tar:
    """A layer tar built in memory with fixed times and owners, so its diff id is stable."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, MTIME
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip() and line.strip() != "bin/busybox"})


def build_image_archive() -> bytes:
    """A docker-save archive of `busybox-demo:latest`: busybox + applets, then /etc and a script."""
    base = _Tar()
    for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "root", "tmp", "var"):
        base.dir(directory, 0o1777 if directory == "tmp" else 0o755)
    base.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _applets():
        depth = applet.count("/")
        base.symlink(applet, "../" * (depth - 1) + "bin/busybox" if depth > 1 else "busybox")
    etc = _Tar()
    etc.dir("etc")
    etc.file("etc/passwd", PASSWD)
    etc.file("etc/group", GROUP)
    etc.file("etc/motd", b"Welcome to the cowstore demo image.\n")
    etc.file("usr/bin/hello", b"#!/bin/sh\necho hello from a cowstore layer\n", 0o755)
    layers = [base.bytes(), etc.bytes()]
    created = now_rfc3339()
    config = json.dumps(
        {
            "architecture": host_architecture(),
            "os": "linux",
            "created": created,
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_bytes(layer) for layer in layers]},
            "history": [
                {"created": created, "created_by": "busybox-static from Debian: /bin/busybox and its applet links"},
                {"created": created, "created_by": "ADD etc/passwd etc/group etc/motd usr/bin/hello"},
            ],
        },
        separators=(",", ":"),
    ).encode()
    archive = _Tar()
    config_name = sha256_bytes(config)[7:] + ".json"
    archive.file(config_name, config)
    names = []
    for number, layer in enumerate(layers):
        archive.dir(f"layer{number}")
        archive.file(f"layer{number}/layer.tar", layer)
        names.append(f"layer{number}/layer.tar")
    manifest = [{"Config": config_name, "RepoTags": ["busybox-demo:latest"], "Layers": names}]
    archive.file("manifest.json", json.dumps(manifest).encode())
    return archive.bytes()


def _du(paths: list[pathlib.Path], skip: set[str]) -> int:
    """Allocated bytes below `paths`, each inode once, not descending into mount points."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(p) for p in paths if os.path.lexists(p)]
    while stack:
        path = stack.pop()
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
        if os.path.isdir(path) and not os.path.islink(path) and path not in skip:
            try:
                stack.extend(os.path.join(path, name) for name in os.listdir(path))
            except PermissionError:
                continue
    return total


def _container_paths(home: pathlib.Path, mount_id: str) -> list[pathlib.Path]:
    """The driver's files for one container: entries named after its mount id, up to two levels down."""
    found = []
    for entry in home.iterdir():
        if entry.name.startswith(mount_id):
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink():
            found.extend(child for child in entry.iterdir() if child.name.startswith(mount_id))
    return found


def _verdict(value: float, claim: float) -> str:
    return "yes" if value < claim else "NO"


# What the drivers that need a device get when the demo runs on a plain ext4 host: a
# loop-mounted btrfs image, and a thin pool small enough to set up in seconds.
HOST_OPTIONS = {
    "btrfs": {"btrfs.loopback": "4G"},
    "devicemapper": {"dm.loopdatasize": "8G", "dm.loopmetadatasize": "256M", "dm.basesize": "1G", "dm.fs": "ext4"},
}


Table = Callable[[Sequence[str], Sequence[Sequence[object]]], None]


def run(
    *,
    driver: str | None = None,
    storage_opts: dict[str, str] | None = None,
    count: int = 100,
    keep: bool = False,
    root: pathlib.Path | None = None,
    echo: Callable[[str], None],
    table: Table,
) -> dict:
    """Run the demo in a fresh temporary store; returns the measurements.

    `echo` prints a line and `table` a table (headers, rows): the CLI passes its own,
    so the demo looks like the rest of the command line without depending on it.
    """
    if not BUSYBOX.exists():
        raise NotFound("/bin/busybox is missing: install Debian's busybox-static (make install does)")
    started = time.monotonic()
    parent = root if root is not None else pathlib.Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    demo_root = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-demo-", dir=parent))
    options = dict(storage_opts or {})
    if driver in HOST_OPTIONS and not (driver == "btrfs" and fsutil.backing_fs(demo_root) == "btrfs"):
        options = {**HOST_OPTIONS[driver], **options}
    store = Store(demo_root, driver, options)
    results: dict = {}
    try:
        echo(f"store: {demo_root}  driver: {store.driver.name}")
        archive = build_image_archive()
        t0 = time.monotonic()
        [image] = load(store.images, io.BytesIO(archive))
        echo(
            f"loaded {image.tags[0]} ({image.short_id}): {len(image.diff_ids)} layers, "
            f"{human_size(store.images.size(image))}, {len(archive) // 1024} KiB archive, {time.monotonic() - t0:.2f}s"
        )
        results = _containers(store, image.tags[0], count, echo, table)
        _isolation(store, image.tags[0], results["names"], echo)
        results.pop("names")
        results["total_seconds"] = time.monotonic() - started
        echo(f"demo finished in {results['total_seconds']:.1f}s")
        return results
    finally:
        for rw in store.layers.rw_layers():
            for _ in range(rw.mount_count):
                store.layers.unmount(rw.name)
        for container in store.containers.containers():
            store.containers.remove(container.id, force=True)
        for img in store.images.images():
            store.images.remove(img.id, force=True)
        store.shutdown()
        if keep:
            echo(f"kept {demo_root}")
        else:
            shutil.rmtree(demo_root, ignore_errors=True)


def _btrfs_used(home: pathlib.Path) -> int:
    """Bytes btrfs has written for data and metadata: shared extents counted once."""
    fsutil.syncfs(home)
    used = allocation(home)
    return used.data_used + used.metadata_used


def _containers(store: Store, ref: str, count: int, echo: Callable[[str], None], table: Table) -> dict:
    home = store.driver.home
    skip = set(mounts.mounts_under(home))
    on_btrfs = store.driver.name == "btrfs"
    before = _btrfs_used(home) if on_btrfs else _du([home], skip)
    rows, times, costs, names = [], [], [], []
    for number in range(1, count + 1):
        used_before = _btrfs_used(home) if on_btrfs else 0
        t0 = time.monotonic()
        container = store.containers.create(ref, name=f"demo{number:03d}")
        path = store.containers.mount(container.id)
        elapsed = time.monotonic() - t0
        mount_id = store.layers.get_rw(container.id).mount_id
        skip.add(str(path))
        if on_btrfs:
            cost = _btrfs_used(home) - used_before
        else:
            cost = _du(_container_paths(home, mount_id), skip)
        times.append(elapsed)
        costs.append(cost)
        names.append(container.name)
        if number in (1, 2, 3) or number % max(1, count // 10) == 0:
            rows.append((number, container.name, f"{elapsed * 1000:.1f} ms", human_size(cost)))
    skip |= set(mounts.mounts_under(home))
    after = _btrfs_used(home) if on_btrfs else _du([home], skip)
    echo("")
    table(("#", "CONTAINER", "CREATE+MOUNT", "DISK COST"), rows)
    echo("")
    median_t, max_t = statistics.median(times), max(times)
    average_cost = (after - before) / count
    table(
        ("MEASURE", f"OVER {count} CONTAINERS", "TALK'S CLAIM", "HOLDS"),
        [
            ("create+mount time (median)", f"{median_t * 1000:.1f} ms", "< 0.1 s", _verdict(median_t, CLAIM_SECONDS)),
            ("create+mount time (max)", f"{max_t * 1000:.1f} ms", "< 0.1 s", _verdict(max_t, CLAIM_SECONDS)),
            (
                "disk per container (median)",
                human_size(statistics.median(costs)),
                "< 1 MB",
                _verdict(statistics.median(costs), CLAIM_BYTES),
            ),
            (
                "disk per container (store delta / N)",
                human_size(average_cost),
                "< 1 MB",
                _verdict(average_cost, CLAIM_BYTES),
            ),
        ],
    )
    echo(
        "(disk = allocated blocks of the driver's new files, each inode once; "
        "on btrfs, the filesystem's own used bytes)"
    )
    return {
        "driver": store.driver.name,
        "containers": count,
        "median_seconds": median_t,
        "max_seconds": max_t,
        "median_bytes": statistics.median(costs),
        "average_bytes": average_cost,
        "names": names,
    }


def _isolation(store: Store, ref: str, names: list[str], echo: Callable[[str], None]) -> None:
    writer, others = names[0], names[1:]
    root = store.containers.mount(writer)
    try:
        (root / "hello.txt").write_text("written in one container\n")
        with open(root / "etc" / "motd", "a") as motd:
            motd.write("changed by one container\n")
        os.unlink(root / "etc" / "group")
    finally:
        store.containers.umount(writer)
    echo("")
    echo(f"wrote /hello.txt, appended to /etc/motd and deleted /etc/group in {writer}")
    unchanged = 0
    for name in others:
        path = store.containers.mount(name)
        try:
            if not (path / "hello.txt").exists() and (path / "etc" / "group").exists():
                unchanged += 1
        finally:
            store.containers.umount(name)
    fresh = store.containers.create(ref, name="demo-fresh")
    path = store.containers.mount(fresh.id)
    image_clean = not (path / "hello.txt").exists() and (path / "etc" / "motd").read_text().count("\n") == 1
    store.containers.umount(fresh.id)
    store.containers.remove(fresh.id)
    echo(
        f"other containers unchanged: {unchanged}/{len(others)}; image unchanged (seen from a new container): "
        f"{'yes' if image_clean else 'NO'}"
    )
    echo(f"$ cowstore diff {writer}")
    for change in store.containers.diff(writer):
        echo(f"  {change}")
    t0 = time.monotonic()
    committed = store.containers.commit(writer, tag="busybox-demo:committed", message="demo commit")
    echo(
        f"committed {writer} as {committed.tags[0]} ({committed.short_id}, {len(committed.diff_ids)} layers) "
        f"in {(time.monotonic() - t0) * 1000:.0f} ms"
    )
    second = store.containers.create(committed.id, name="demo-from-commit")
    path = store.containers.mount(second.id)
    try:
        echo(f"{second.name} reads /hello.txt through its mount: {(path / 'hello.txt').read_text().strip()!r}")
        echo(f"{second.name} has /etc/group: {(path / 'etc' / 'group').exists()}")
        _chroot(path, echo)
    finally:
        store.containers.umount(second.id)


def _chroot(path: pathlib.Path, echo: Callable[[str], None]) -> None:
    """Run busybox inside the committed container's root (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        echo("(not root: skipping the chroot run)")
        return
    command = ["chroot", str(path), "/bin/busybox", "sh", "-c", "cat /hello.txt; /usr/bin/hello; uname -s"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        echo(f"(chroot run failed: {done.stderr.strip()})")
        return
    echo("$ chroot <mount> /bin/busybox sh -c 'cat /hello.txt; /usr/bin/hello; uname -s'")
    for line in done.stdout.splitlines():
        echo(f"  {line}")
