"""thin_dump XML export/import, checked by Debian's thin-provisioning-tools."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cowstore.drivers.devicemapper.thinpool import BadMetadata, ThinPool, xmldump

from .conftest import MiB

BS = 64 * 1024
needs_tools = pytest.mark.skipif(
    shutil.which("thin_restore") is None or shutil.which("thin_check") is None,
    reason="thin-provisioning-tools not installed",
)


def populate(pool: ThinPool) -> None:
    pool.create_thin(1, 8 * MiB)
    pool.write(1, 0, b"a" * (3 * BS))
    pool.write(1, 10 * BS, b"b")
    pool.create_snap(2, 1)
    pool.write(2, 0, b"c")
    pool.set_transaction_id(0, 3)


@needs_tools
def test_dump_is_accepted_by_thin_restore_and_thin_check(pool, tmp_path):
    populate(pool)
    xml = tmp_path / "dump.xml"
    xml.write_text(xmldump.dump(pool))
    meta = tmp_path / "tmeta"
    meta.write_bytes(b"")
    subprocess.run(["truncate", "-s", "8M", str(meta)], check=True)
    subprocess.run(["thin_restore", "-i", str(xml), "-o", str(meta)], check=True, capture_output=True)
    subprocess.run(["thin_check", str(meta)], check=True, capture_output=True)
    back = subprocess.run(["thin_dump", str(meta)], check=True, capture_output=True, text=True).stdout
    assert back.split() == xml.read_text().split()


def test_restore_rebuilds_the_same_pool(pool, files, tmp_path):
    populate(pool)
    text = xmldump.dump(pool)
    (tmp_path / "d.xml").write_text(text)
    meta = tmp_path / "meta2"
    meta.write_bytes(bytes(4 * MiB))
    xmldump.restore(tmp_path / "d.xml", meta, files[1], sizes={1: 8 * MiB, 2: 8 * MiB})
    with ThinPool.open(meta, files[1], min_free_pct=0) as restored:
        assert xmldump.dump(restored) == text
        assert restored.read(2, 0, 2) == b"ca"
        assert restored.read(1, 10 * BS, 1) == b"b"
        assert restored.check() == []


def test_restore_rejects_bad_xml(files, tmp_path):
    meta = tmp_path / "meta2"
    meta.write_bytes(bytes(4 * MiB))
    (tmp_path / "bad.xml").write_text('<superblock data_block_size="128" nr_data_blocks="16"><device/></superblock>')
    with pytest.raises(BadMetadata, match="dev_id"):
        xmldump.restore(tmp_path / "bad.xml", meta, files[1])
