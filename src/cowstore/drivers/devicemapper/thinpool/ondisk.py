"""On-disk records of the metadata area: superblocks and the device table.

The metadata area is an array of 4 KiB blocks. Blocks 0 and 1 hold two superblock
slots written alternately, each with a sequence number and a CRC: a commit writes
the slot the current one is not in, so a torn or interrupted superblock write leaves
the previous commit readable. Everything else (radix-tree nodes, reference-count
leaves, device-table blocks) is written copy-on-write to blocks that the committed
superblock does not reach, which is what makes a commit atomic.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import astuple, dataclass

META_BLOCK = 4096
SUPERBLOCK_SLOTS = 2
MAGIC = b"CWTHINP1"
VERSION = 1

_SB = struct.Struct("<8sIIQQQQQQIIQII")
_DEVTAB_HEADER = struct.Struct("<QI")
_DEV = struct.Struct("<IIQQQQII")
DEVICES_PER_BLOCK = (META_BLOCK - _DEVTAB_HEADER.size) // _DEV.size


@dataclass
class Superblock:
    """The root of one committed state of the pool."""

    seq: int = 0
    transaction_id: int = 0
    data_block_size: int = 65536
    nr_data_blocks: int = 0
    nr_meta_blocks: int = 0
    ref_root: int = 0
    ref_depth: int = 1
    devtab_root: int = 0
    time: int = 0
    devices: int = 0

    def pack(self) -> bytes:
        body = _SB.pack(
            MAGIC,
            VERSION,
            0,
            self.seq,
            self.transaction_id,
            self.data_block_size,
            self.nr_data_blocks,
            self.nr_meta_blocks,
            self.ref_root,
            self.ref_depth,
            self.time,
            self.devtab_root,
            self.devices,
            0,
        )
        crc = zlib.crc32(body)
        return (body + struct.pack("<I", crc)).ljust(META_BLOCK, b"\0")

    @classmethod
    def unpack(cls, raw: bytes) -> Superblock | None:
        """The superblock in `raw`, or None when the slot is empty, torn or foreign."""
        if len(raw) < _SB.size + 4:
            return None
        body = raw[: _SB.size]
        (crc,) = struct.unpack_from("<I", raw, _SB.size)
        if zlib.crc32(body) != crc:
            return None
        (magic, version, _pad, seq, txn, dbs, ndata, nmeta, ref_root, ref_depth, time, devtab, ndev, _pad2) = (
            _SB.unpack(body)
        )
        if magic != MAGIC or version != VERSION:
            return None
        return cls(
            seq=seq,
            transaction_id=txn,
            data_block_size=dbs,
            nr_data_blocks=ndata,
            nr_meta_blocks=nmeta,
            ref_root=ref_root,
            ref_depth=ref_depth,
            devtab_root=devtab,
            time=time,
            devices=ndev,
        )


@dataclass
class Device:
    """One thin device: its radix tree root and the facts thin_dump reports."""

    dev_id: int  # fields in their on-disk order
    depth: int  # radix levels; 512**depth virtual blocks are addressable
    size: int  # virtual size in bytes
    root: int = 0  # metadata block of the top node, 0 for an empty device
    mapped: int = 0  # mapped virtual blocks
    transaction: int = 0  # pool transaction id when created
    creation_time: int = 0
    snap_time: int = 0

    def pack(self) -> bytes:
        return _DEV.pack(*astuple(self))

    @classmethod
    def unpack_from(cls, raw: bytes, offset: int) -> Device:
        return cls(*_DEV.unpack_from(raw, offset))


def pack_devtab_block(next_block: int, devices: list[Device]) -> bytes:
    """One block of the device table chain."""
    parts = [_DEVTAB_HEADER.pack(next_block, len(devices))]
    parts.extend(dev.pack() for dev in devices)
    return b"".join(parts).ljust(META_BLOCK, b"\0")


def unpack_devtab_block(raw: bytes) -> tuple[int, list[Device]]:
    """(next block, devices) of one device table block."""
    next_block, count = _DEVTAB_HEADER.unpack_from(raw, 0)
    if count > DEVICES_PER_BLOCK:
        raise ValueError("device table block holds too many entries")
    devices = [Device.unpack_from(raw, _DEVTAB_HEADER.size + i * _DEV.size) for i in range(count)]
    return next_block, devices
