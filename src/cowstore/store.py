"""The top-level store: a root directory, its driver, layers, images and containers.

This is what the CLI and the demo open. Driver selection follows Docker: a driver
whose directory in the root already holds data wins (several is an error), else btrfs
when the root is on btrfs, else overlay2 when the kernel can run it, else vfs. The
driver a root was first used with is recorded, because all layers in the root's one
database belong to it: opening the root with another driver is refused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cowstore.archive.limits import Limits
from cowstore.containers import ContainerStore
from cowstore.drivers import Driver, driver_names, open_driver
from cowstore.errors import InvalidOption, NotSupported
from cowstore.host import fsutil, mounts, paths
from cowstore.images import ImageStore
from cowstore.layers import LayerStore
from cowstore.metadata import settings

if TYPE_CHECKING:
    from cowstore.layers.consistency import Problem
    from cowstore.layers.store import DriverOrOpener

DEPRECATED = ("aufs", "devicemapper", "overlay")


def default_root() -> pathlib.Path:
    """`$COWSTORE_ROOT`, else /var/lib/cowstore for root, else `$XDG_DATA_HOME/cowstore`."""
    return pathlib.Path(paths.default_root())


def recorded_driver(root: pathlib.Path) -> str | None:
    """The driver name stored in the root's database, if it has one."""
    return settings.recorded(root, "driver")


def _prior_drivers(root: pathlib.Path) -> list[str]:
    found = []
    for name in driver_names():
        home = root / name
        with contextlib.suppress(OSError):
            if home.is_dir() and any(home.iterdir()):
                found.append(name)
    return found


def _try_open(name: str, root: pathlib.Path, options: Mapping[str, str]) -> Driver | None:
    home = root / name
    existed = home.exists()
    try:
        return open_driver(name, home, options)
    except NotSupported:
        if not existed:
            with contextlib.suppress(OSError):
                home.rmdir()
        return None


def select_driver(
    root: pathlib.Path, requested: str | None, options: Mapping[str, str], recorded: str | None = None
) -> Driver:
    """Open the requested driver, or choose one the way Docker does (see module docstring).

    `recorded` is the driver the root's database names, if the caller has read it.
    """
    recorded = recorded or recorded_driver(root)
    if requested:
        if recorded and recorded != requested:
            raise InvalidOption(
                f"the store at {root} was created with the {recorded} driver; use --driver {recorded} or another --root"
            )
        return open_driver(requested, root / requested, options)
    if recorded:
        return open_driver(recorded, root / recorded, options)
    prior = _prior_drivers(root)
    if len(prior) > 1:
        raise InvalidOption(
            f"{root} contains several graphdrivers: {', '.join(prior)}; cleanup or explicitly choose one with --driver"
        )
    if prior:
        return open_driver(prior[0], root / prior[0], options)
    candidates = (["btrfs"] if fsutil.backing_fs(root) == "btrfs" else []) + ["overlay2", "vfs"]
    for name in candidates:
        driver = _try_open(name, root, options)
        if driver is not None:
            return driver
    raise NotSupported(f"no storage driver can run on {root}")


class Store:
    """Everything under one root; close() keeps mounts (like `podman mount`), shutdown() releases them."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        driver: str | None = None,
        storage_opts: Mapping[str, str] | None = None,
        *,
        sync: bool = True,
        limits: Limits | None = None,
        lazy_driver: bool = False,
    ) -> None:
        """Open the store at `root` (see the module docstring for the driver it uses).

        With `lazy_driver`, a root that already records its driver opens it only when
        something needs it: listings read the database alone, and opening some drivers
        (a thin pool's server, a FUSE union) costs more than the listing itself.
        """
        self.root = pathlib.Path(root) if root is not None else default_root()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        recorded = recorded_driver(self.root)
        options = dict(storage_opts or {})
        chosen: DriverOrOpener
        if lazy_driver and recorded is not None and driver in (None, recorded):
            chosen = functools.partial(open_driver, recorded, self.root / recorded, options)
        else:
            chosen = select_driver(self.root, driver, options, recorded)
        try:
            self.layers = LayerStore(self.root, chosen, sync=sync, limits=limits)
        except BaseException:
            if isinstance(chosen, Driver):
                chosen.cleanup()
            raise
        try:
            if recorded is None:
                with self.layers.lock.exclusive():
                    settings.record(self.layers.db, "driver", self.driver.name)
            self.images = ImageStore(self.layers)
            self.containers = ContainerStore(self.layers, self.images)
            self.images.container_users = self.containers.users_of
            if self.layers.interrupted:  # a process died mid-operation: finish its work everywhere
                with self.layers.lock.exclusive():
                    self._reconcile_containers(repair=True)
        except BaseException:
            self.layers.close()
            self._release_driver()
            raise

    @property
    def driver(self) -> Driver:
        return self.layers.driver

    def _release_driver(self) -> None:
        driver = self.layers.opened_driver
        if driver is not None:
            driver.cleanup()

    def close(self) -> None:
        self.layers.close()

    def recover_interrupted(self) -> bool:
        """Finish what a process that died since this store was opened left undone, as an
        opener would: for an opener that lives long (the store service). A directory scan
        when nothing was interrupted; True when something was recovered."""
        from cowstore.layers.lock import OperationLock

        if not OperationLock.interrupted(self.layers.tmp):
            return False
        self.layers.recover()
        with self.layers.lock.exclusive():
            self._reconcile_containers(repair=True)
        return True

    def shutdown(self) -> None:
        """Close and release every mount the driver made (containers are unmounted)."""
        try:
            for rw in self.layers.rw_layers():
                for _ in range(rw.mount_count):
                    self.layers.unmount(rw.name)
            self.close()
        finally:
            self._release_driver()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        """What `cowstore info` prints: root, driver status, counts, and Docker's warnings."""
        status = self.driver.status()
        rws = self.layers.rw_layers()
        return {
            "Root": str(self.root),
            "Driver": self.driver.name,
            "DriverStatus": [list(pair) for pair in status],
            "BackingFilesystem": fsutil.backing_fs(self.root),
            "Images": len(self.images.images()),
            "Layers": len(self.layers.layers()),
            "Snapshots": len(self.layers.snapshots.snapshots(None)),
            "Containers": len(self.containers.containers()),
            "ContainersMounted": sum(1 for rw in rws if rw.mount_count),
            "Mounts": len(mounts.mounts_under(self.root)),
            "Warnings": warnings(self.driver.name, status),
        }

    def check(self, *, repair: bool = False, verify_content: bool = False) -> list[Problem]:
        """`cowstore check`: layers (via the layer store), then images and containers records."""
        from cowstore.layers.consistency import Problem

        with self.layers.lock.exclusive():
            images = self.images.images()
            expected = Counter(image.top_layer for image in images if image.top_layer)
            problems = self.layers.check(repair=repair, verify_content=verify_content, expected_refs=expected)
            stored = {layer.chain_id for layer in self.layers.layers()}
            for image in images:
                if image.top_layer and image.top_layer not in stored:
                    problem = Problem("broken-image", image.id, "its layers are gone; remove it and load it again")
                    if repair:
                        self.images.forget(image.id)
                        problem.repaired = True
                    problems.append(problem)
            problems += self._reconcile_containers(repair)
        return problems

    def _reconcile_containers(self, repair: bool) -> list[Problem]:
        """Container records and container layers must match one to one (store lock held).

        Each container record is written and deleted in the transaction that changes
        its layer's state, so only stores from before that (or hand edits) mismatch;
        opening a store after a crash, and `check --repair`, mend them.
        """
        from cowstore.layers.consistency import Problem

        problems = []
        rw_names = {rw.name for rw in self.layers.rw_layers()}
        records = {c.id for c in self.containers.containers()}
        for missing in sorted(records - rw_names):
            problem = Problem("missing-storage", missing, "container record without its layers")
            if repair:
                self.containers.forget(missing)
                problem.repaired = True
            problems.append(problem)
        for orphan in sorted(rw_names - records):
            problem = Problem("orphan-storage", orphan, "container layer with no container record")
            if repair:
                self.layers.remove_rw(orphan, force=True)
                problem.repaired = True
            problems.append(problem)
        return problems


def warnings(driver: str, status: list[tuple[str, str]]) -> list[str]:
    """The storage warnings `docker info` prints, from the driver's status lines."""
    pairs = dict(status)
    found = []
    if driver in DEPRECATED:
        found.append(f"WARNING: the {driver} storage-driver is deprecated, and will be removed in a future release.")
    if "Data loop file" in pairs:
        found.append(
            f"WARNING: {driver}: usage of loopback devices is strongly discouraged for production use.\n"
            "         Use `--storage-opt dm.thinpooldev` to specify a custom block storage device."
        )
    elif any("loop" in key.lower() for key in pairs):
        found.append(
            f"WARNING: {driver}: the store lives on a loopback device, which is slower than a real block device."
        )
    if pairs.get("Supports d_type") == "false":
        backing = pairs.get("Backing Filesystem", "<unknown>")
        text = (
            f"WARNING: {driver}: the backing {backing} filesystem is formatted without d_type support, "
            "which leads to incorrect behavior."
        )
        if backing == "xfs":
            text += "\n         Reformat the filesystem with ftype=1 to enable d_type support."
        text += "\n         Running without d_type support will not be supported in future releases."
        found.append(text)
    return found
