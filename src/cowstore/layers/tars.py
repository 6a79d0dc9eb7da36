"""A stored layer's original tar, reassembled from its tar-split record and its files."""

from __future__ import annotations

from cowstore.digest import DigestingWriter, Writer
from cowstore.drivers.driver import Driver
from cowstore.errors import DigestMismatch
from cowstore.layers import tarsplit
from cowstore.layers.records import Layer


def assemble(driver: Driver, layer: Layer, split: bytes, out: Writer) -> None:
    """Write `layer`'s tar to `out`, hashed on the way: DigestMismatch when it no longer
    hashes to its diff id (what was written must then be discarded)."""
    digester = DigestingWriter(out)
    root = driver.get(layer.cache_id)
    try:
        tarsplit.assemble(split, root, digester.write)
    finally:
        driver.put(layer.cache_id)
    if digester.digest != layer.diff_id:
        raise DigestMismatch(
            f"could not verify layer data for: {layer.diff_id}. This may be because internal files in the "
            "layer store were modified. Re-pull or re-import the image to fix it."
        )


class Discard:
    """A writer that keeps nothing (reassembling a layer only to hash it)."""

    def write(self, data: bytes) -> None:
        pass
