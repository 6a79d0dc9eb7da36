"""The pool's metadata in thin_dump's XML, both ways.

thin-provisioning-tools (`thin_dump`, `thin_restore`, `thin_check`) exchange a pool's
metadata as XML: a `superblock` element (data block size in 512-byte sectors), one
`device` element per thin device, and runs of consecutive mappings as
`range_mapping`, lone ones as `single_mapping`. Writing that format lets the Debian
tools validate our pools; reading it lets a pool be rebuilt from their dumps. The
XML carries no device sizes (dm keeps them in the device tables), so import takes
them from the caller or sizes each device to its last mapped block.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from typing import TextIO
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

from cowstore.drivers.devicemapper.thinpool.dataio import path_size
from cowstore.drivers.devicemapper.thinpool.errors import BadMetadata
from cowstore.drivers.devicemapper.thinpool.ondisk import Device
from cowstore.drivers.devicemapper.thinpool.pool import ThinPool


def _runs(mappings: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """(origin begin, data begin, length) of maximal runs where both sides advance by one."""
    start = None
    for vblock, data in mappings:
        if start is not None and vblock == start[0] + start[2] and data == start[1] + start[2]:
            start = (start[0], start[1], start[2] + 1)
            continue
        if start is not None:
            yield start
        start = (vblock, data, 1)
    if start is not None:
        yield start


def write_dump(pool: ThinPool, out: TextIO) -> None:
    """Write the pool's committed-or-current metadata as thin_dump XML."""
    with pool.locked():
        sb = pool.superblock()
        sectors = pool.block_size // 512
        out.write(
            f'<superblock uuid="" time="{sb.time}" transaction="{sb.transaction_id}" flags="0" '
            f'version="2" data_block_size="{sectors}" nr_data_blocks="{sb.nr_data_blocks}">\n'
        )
        for dev in pool.devices():
            out.write(
                f'  <device dev_id="{dev.dev_id}" mapped_blocks="{dev.mapped}" transaction="{dev.transaction}" '
                f'creation_time="{dev.creation_time}" snap_time="{dev.snap_time}">\n'
            )
            for origin, data, length in _runs(pool.mappings(dev.dev_id)):
                if length == 1:
                    out.write(f'    <single_mapping origin_block="{origin}" data_block="{data}" time="0"/>\n')
                else:
                    out.write(
                        f'    <range_mapping origin_begin="{origin}" data_begin="{data}" length="{length}" time="0"/>\n'
                    )
            out.write("  </device>\n")
        out.write("</superblock>\n")


def dump(pool: ThinPool) -> str:
    """The thin_dump XML of a pool as a string."""
    buffer = io.StringIO()
    write_dump(pool, buffer)
    return buffer.getvalue()


def _int(element: ElementTree.Element, name: str) -> int:
    value = element.get(name)
    if value is None or not value.isdigit():
        raise BadMetadata(
            f"thin_dump XML: <{element.tag}> needs a numeric {name}= attribute, got {quoteattr(str(value))}"
        )
    return int(value)


def _device_mappings(element: ElementTree.Element) -> list[tuple[int, int]]:
    mappings: list[tuple[int, int]] = []
    for child in element:
        if child.tag == "single_mapping":
            mappings.append((_int(child, "origin_block"), _int(child, "data_block")))
        elif child.tag == "range_mapping":
            origin, data = _int(child, "origin_begin"), _int(child, "data_begin")
            mappings.extend((origin + i, data + i) for i in range(_int(child, "length")))
        else:
            raise BadMetadata(f"thin_dump XML: unexpected <{child.tag}> in <device>")
    return mappings


def restore(
    xml: str | os.PathLike | TextIO,
    metadata: str | os.PathLike,
    data: str | os.PathLike,
    *,
    sizes: Mapping[int, int] | None = None,
    read_only: bool = False,
) -> None:
    """Build a new pool in `metadata` (must hold no pool) from thin_dump XML.

    `data` must be at least nr_data_blocks × block size long; `sizes` gives device
    sizes in bytes (default: up to the last mapped block). With `read_only`, the data
    area is only ever opened for reading (restoring the model of a pool kept elsewhere).
    """
    source = open(xml) if isinstance(xml, (str, os.PathLike)) else xml
    try:
        root = ElementTree.parse(source).getroot()
    except ElementTree.ParseError as exc:
        raise BadMetadata(f"thin_dump XML does not parse: {exc}") from None
    finally:
        if source is not xml:
            source.close()
    if root.tag != "superblock":
        raise BadMetadata(f"thin_dump XML must start with <superblock>, not <{root.tag}>")
    block_size = _int(root, "data_block_size") * 512
    if path_size(data) < _int(root, "nr_data_blocks") * block_size:
        raise BadMetadata(f"data area {data} is smaller than the dump's {root.get('nr_data_blocks')} blocks")
    ThinPool.format(metadata, data, block_size=block_size)
    with ThinPool.open(metadata, data, min_free_pct=0, scrub=False, read_only=read_only) as pool:
        for element in root:
            if element.tag != "device":
                raise BadMetadata(f"thin_dump XML: unexpected <{element.tag}> in <superblock>")
            dev_id = _int(element, "dev_id")
            mappings = _device_mappings(element)
            size = (sizes or {}).get(dev_id) or (max((v for v, _ in mappings), default=0) + 1) * block_size
            dev = Device(
                dev_id=dev_id,
                size=size,
                depth=1,
                transaction=_int(element, "transaction"),
                creation_time=_int(element, "creation_time"),
                snap_time=_int(element, "snap_time"),
            )
            pool.import_device(dev, iter(mappings))
        pool.set_time(_int(root, "time"))
        pool.set_transaction_id(pool.status().transaction_id, _int(root, "transaction"))
