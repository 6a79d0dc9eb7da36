"""The thin pool engine without any mount: mapping, CoW, refcounts, discard, commits."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from cowstore.drivers.devicemapper.thinpool import (
    BadMetadata,
    DeviceExists,
    DeviceNotFound,
    MinFreeSpace,
    OutOfRange,
    PoolError,
    PoolFull,
    ThinPool,
)

from .conftest import MiB, make_files

BS = 64 * 1024


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_unwritten_blocks_read_zero_and_take_no_space(pool, files):
    pool.create_thin(1, 8 * MiB)
    assert pool.read(1, 0, 3 * BS) == bytes(3 * BS)
    assert pool.status().used_data_blocks == 0
    pool.write(1, 5 * BS + 100, b"abc")
    assert pool.read(1, 5 * BS, BS) == bytes(100) + b"abc" + bytes(BS - 103)
    assert pool.status().used_data_blocks == 1
    pool.flush()
    assert allocated(files[1]) <= 2 * BS


def test_snapshot_shares_then_copies_on_write(pool):
    pool.create_thin(1, 4 * MiB)
    pool.write(1, 0, b"A" * (2 * BS))
    pool.create_snap(2, 1)
    assert pool.status().used_data_blocks == 2
    pool.write(1, 10, b"B")
    assert pool.read(2, 0, 2 * BS) == b"A" * (2 * BS)
    assert pool.read(1, 0, 12) == b"A" * 10 + b"BA"
    assert pool.status().used_data_blocks == 3  # only the written block was copied
    pool.write(2, BS, b"C" * BS)
    assert pool.read(1, BS, BS) == b"A" * BS
    assert pool.status().used_data_blocks == 4
    assert pool.check() == []


def test_snapshot_of_snapshot_and_delete_origin(pool):
    pool.create_thin(1, 2 * MiB)
    pool.write(1, 0, b"x" * BS)
    pool.create_snap(2, 1)
    pool.create_snap(3, 2)
    pool.delete(1)
    pool.delete(2)
    assert pool.read(3, 0, BS) == b"x" * BS
    assert pool.status().used_data_blocks == 1
    pool.delete(3)
    pool.flush()
    assert pool.status().used_data_blocks == 0
    assert pool.check() == []


def test_random_operations_match_a_model(pool):
    """Writes, snapshots, discards and deletes against an in-memory model of every device."""
    rng = random.Random(7)
    size = 24 * BS
    model: dict[int, bytearray] = {1: bytearray(size)}
    pool.create_thin(1, size)
    next_id = 2
    for step in range(600):
        op = rng.random()
        dev = rng.choice(list(model))
        if op < 0.55:
            offset = rng.randrange(size - 1)
            data = bytes([rng.randrange(256)]) * min(rng.choice([1, 4096, BS, 2 * BS + 5]), size - offset)
            pool.write(dev, offset, data)
            model[dev][offset:offset + len(data)] = data
        elif op < 0.7:
            offset = rng.randrange(size - 1)
            length = min(rng.randrange(1, 4 * BS), size - offset)
            pool.discard(dev, offset, length)
            model[dev][offset:offset + length] = bytes(length)
        elif op < 0.8:
            pool.create_snap(next_id, dev)
            model[next_id] = bytearray(model[dev])
            next_id += 1
        elif op < 0.87 and len(model) > 1:
            pool.delete(dev)
            del model[dev]
        elif op < 0.9:
            pool.flush()
        if step % 50 == 0:
            assert pool.check() == []
    for dev, content in model.items():
        assert pool.read(dev, 0, size) == bytes(content), dev
    assert pool.check() == []
    pool.close()


def test_discard_unmaps_and_punches_holes(pool, files):
    pool.create_thin(1, 8 * MiB)
    pool.write(1, 0, b"z" * (8 * BS))
    pool.flush()
    before = allocated(files[1])
    assert before >= 8 * BS
    pool.discard(1, 0, 8 * BS)
    assert pool.read(1, 0, 8 * BS) == bytes(8 * BS)
    pool.flush()
    assert pool.status().used_data_blocks == 0
    assert pool.device(1).mapped == 0
    assert allocated(files[1]) < before - 7 * BS


def test_discard_of_shared_block_keeps_the_other_owner(pool):
    pool.create_thin(1, MiB)
    pool.write(1, 0, b"s" * BS)
    pool.create_snap(2, 1)
    pool.discard(1, 0, BS)
    pool.write(2, 0, b"t")  # must not write into a block the committed state still shares
    assert pool.read(2, 0, 2) == b"ts"
    assert pool.read(1, 0, 2) == bytes(2)
    assert pool.check() == []


def test_partial_discard_zeroes_only_the_range(pool):
    pool.create_thin(1, MiB)
    pool.write(1, 0, b"q" * BS)
    pool.discard(1, 100, 200)
    assert pool.read(1, 0, BS) == b"q" * 100 + bytes(200) + b"q" * (BS - 300)


def test_reopen_sees_committed_state(files):
    with ThinPool.open(*files, min_free_pct=0) as pool:
        pool.create_thin(5, 3 * MiB)
        pool.write(5, BS - 1, b"hello")
        pool.create_snap(6, 5)
        pool.set_transaction_id(0, 9)
    with ThinPool.open(*files, min_free_pct=0) as pool:
        assert [d.dev_id for d in pool.devices()] == [5, 6]
        assert pool.read(6, BS - 1, 5) == b"hello"
        assert pool.status().transaction_id == 9
        assert pool.check() == []


def test_crash_without_commit_returns_to_last_commit(files):
    pool = ThinPool.open(*files, min_free_pct=0)
    pool.create_thin(1, MiB)
    pool.write(1, 0, b"committed")
    pool.flush()
    pool.write(1, 2 * BS, b"lost")  # a new mapping, never committed
    pool.discard(1, 0, BS)  # an unmap, never committed
    pool.abandon()
    with ThinPool.open(*files, min_free_pct=0) as pool:
        assert pool.read(1, 0, 9) == b"committed"
        assert pool.read(1, 2 * BS, 4) == bytes(4)
        assert pool.status().used_data_blocks == 1
        assert pool.check() == []


def test_torn_superblock_falls_back_to_previous_slot(files):
    with ThinPool.open(*files, min_free_pct=0) as pool:
        pool.create_thin(1, MiB)
        pool.create_thin(2, MiB)
        seq = pool.superblock().seq
    with open(files[0], "r+b") as f:
        f.seek((seq % 2) * 4096 + 20)
        f.write(b"\xff\xff")
    with ThinPool.open(*files, min_free_pct=0) as pool:
        assert [d.dev_id for d in pool.devices()] == [1]
        assert pool.check() == []


def test_not_a_pool(tmp_path):
    meta, data = tmp_path / "m", tmp_path / "d"
    meta.write_bytes(bytes(1 << 20))
    data.write_bytes(b"")
    with pytest.raises(BadMetadata):
        ThinPool.open(meta, data)


def test_format_refuses_existing_pool(files):
    with pytest.raises(PoolError, match="already holds"):
        ThinPool.format(*files)


def test_device_errors(pool):
    pool.create_thin(1, MiB)
    with pytest.raises(DeviceExists):
        pool.create_thin(1, MiB)
    with pytest.raises(DeviceNotFound):
        pool.create_snap(2, 99)
    with pytest.raises(DeviceNotFound):
        pool.delete(99)
    with pytest.raises(OutOfRange):
        pool.write(1, MiB - 1, b"ab")
    with pytest.raises(PoolError):
        pool.create_thin(0x1000000, MiB)
    with pytest.raises(PoolError):
        ThinPool.format("/nonexistent-meta", "/nonexistent-data", block_size=65536 + 512)


def test_pool_full_error_policy(tmp_path):
    files = make_files(tmp_path, data_size=8 * BS)
    with ThinPool.open(*files, min_free_pct=0, no_space_policy="error") as pool:
        pool.create_thin(1, MiB)
        pool.write(1, 0, b"f" * (8 * BS))
        with pytest.raises(PoolFull) as info:
            pool.write(1, 8 * BS, b"!")
        assert info.value.errno == 28
        pool.discard(1, 0, BS)
        pool.write(1, 8 * BS, b"!")  # the freed block is usable after the implicit commit
        assert pool.check() == []


def test_write_running_out_of_space_keeps_what_it_mapped(tmp_path):
    """A write that fills the pool part-way fails, but the blocks it did map hold its bytes."""
    files = make_files(tmp_path, data_size=8 * BS)
    with ThinPool.open(*files, min_free_pct=0, no_space_policy="error") as pool:
        pool.create_thin(1, MiB)
        pool.write(1, 0, b"f" * (6 * BS))
        with pytest.raises(PoolFull):
            pool.write(1, 6 * BS, b"n" * (4 * BS))
        assert pool.read(1, 6 * BS, 2 * BS) == b"n" * (2 * BS)
        assert pool.check() == []


def test_pool_full_queue_waits_for_growth(tmp_path):
    meta, data = make_files(tmp_path, data_size=2 * BS)
    with ThinPool.open(meta, data, min_free_pct=0, no_space_policy="queue", queue_timeout=30) as pool:
        pool.create_thin(1, MiB)
        pool.write(1, 0, b"f" * (2 * BS))
        grower = threading.Timer(0.3, lambda: os.truncate(data, 4 * BS))
        grower.start()
        try:
            pool.write(1, 2 * BS, b"queued")
        finally:
            grower.join()
        assert pool.read(1, 2 * BS, 6) == b"queued"
        assert pool.status().total_data_blocks == 4


def test_pool_full_queue_times_out(tmp_path):
    files = make_files(tmp_path, data_size=BS)
    with ThinPool.open(*files, min_free_pct=0, no_space_policy="queue", queue_timeout=0.3) as pool:
        pool.create_thin(1, MiB)
        pool.write(1, 0, b"f")
        with pytest.raises(PoolFull, match="queue"):
            pool.write(1, BS, b"g")


def test_min_free_space_refuses_new_devices(tmp_path):
    files = make_files(tmp_path, data_size=10 * BS)
    with ThinPool.open(*files, min_free_pct=20) as pool:
        pool.create_thin(1, MiB)
        pool.write(1, 0, b"m" * (9 * BS))
        with pytest.raises(MinFreeSpace, match="Thin Pool has 1 free data blocks which is less than minimum required 2"):
            pool.create_snap(2, 1)


def test_grow_data_and_device(pool, files):
    total = pool.status().total_data_blocks
    pool.resize_data(os.path.getsize(files[1]) + 16 * BS)
    assert pool.status().total_data_blocks == total + 16
    pool.create_thin(1, BS)
    pool.write(1, 0, b"a")
    pool.set_device_size(1, 1024 * BS)  # adds a radix level above the existing root
    pool.write(1, 700 * BS, b"b")
    assert pool.read(1, 0, 1) == b"a" and pool.read(1, 700 * BS, 1) == b"b"
    with pytest.raises(PoolError):
        pool.set_device_size(1, BS)
    assert pool.check() == []


def test_larger_block_size(tmp_path):
    meta, data = tmp_path / "m", tmp_path / "d"
    meta.write_bytes(bytes(1 << 20))
    data.write_bytes(b"")
    os.truncate(data, 16 * MiB)
    ThinPool.format(meta, data, block_size=128 * 1024)
    with ThinPool.open(meta, data, min_free_pct=0) as pool:
        pool.create_thin(1, MiB)
        pool.write(1, 100_000, b"x" * 100_000)
        assert pool.status().used_data_blocks == 2
        assert pool.read(1, 100_000, 100_000) == b"x" * 100_000


def test_many_mapped_blocks(tmp_path):
    files = make_files(tmp_path, data_size=4096 * BS, meta_size=8 * MiB)
    with ThinPool.open(*files, min_free_pct=0) as pool:
        pool.create_thin(1, 4096 * BS)
        for vblock in range(0, 3000):
            pool.write(1, vblock * BS, b"k")
        pool.create_snap(2, 1)
        pool.write(2, 2999 * BS, b"l")
    with ThinPool.open(*files, min_free_pct=0) as pool:
        assert pool.device(1).mapped == 3000
        assert pool.read(1, 2999 * BS, 1) == b"k" and pool.read(2, 2999 * BS, 1) == b"l"
        assert pool.status().used_data_blocks == 3001
        assert pool.check() == []


WORKER = os.path.join(os.path.dirname(__file__), "crash_worker.py")


def test_killed_pool_reopens_consistent(tmp_path):
    """SIGKILL a process mutating the pool at random moments; every reopen must be clean."""
    files = make_files(tmp_path, data_size=96 * BS)
    pattern = bytes(range(256)) * (8 * BS // 256)
    with ThinPool.open(*files, min_free_pct=0) as pool:
        pool.create_thin(1, 8 * BS)
        pool.write(1, 0, pattern)
        pool.create_snap(2, 1)
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, WORKER, str(files[0]), str(files[1]), str(round_)],
                                stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.02, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        with ThinPool.open(*files, min_free_pct=0) as pool:
            assert pool.check() == [], f"round {round_}"
            assert pool.read(2, 0, len(pattern)) == pattern
            assert 1 in [d.dev_id for d in pool.devices()]


def test_reads_outside_the_lock_never_see_reused_blocks(pool: ThinPool) -> None:
    """Readers of a snapshot race a writer that rewrites, discards and commits the origin.

    Reads copy data outside the pool lock; blocks freed by the writer must not be reused
    (or punched) while a read may still be copying them.
    """
    import threading

    size = 64 * 64 * 1024
    pool.create_thin(1, size)
    original = bytes(range(256)) * (size // 256)
    pool.write(1, 0, original)
    pool.create_snap(2, 1)
    pool.flush()
    stop = threading.Event()
    wrong: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            for offset in range(0, size, 256 * 1024):
                if pool.read(2, offset, 256 * 1024) != original[offset : offset + 256 * 1024]:
                    wrong.append(offset)

    def writer() -> None:
        rounds = 0
        while not stop.is_set():
            pool.write(1, (rounds % 64) * 65536, bytes([rounds % 251]) * 65536)
            if rounds % 7 == 0:
                pool.discard(1, ((rounds * 3) % 64) * 65536, 65536)
            if rounds % 5 == 0:
                pool.flush()
            rounds += 1

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    import time

    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert wrong == []
    assert pool.check() == []


def _resident(path) -> int:
    out = subprocess.run(["fincore", "-b", "-n", "-r", "-o", "RES", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_aligned_reads_bypass_the_data_file_cache(pool: ThinPool, files) -> None:
    """Page-aligned reads go around the data file's page cache (O_DIRECT), yet see
    data still dirty in it; unaligned reads fall back to the cache."""
    import mmap

    data = os.urandom(2 * MiB)
    pool.create_thin(1, 4 * MiB)
    pool.write(1, 0, data)  # not flushed: dirty in the data file's page cache
    with mmap.mmap(-1, 4 * MiB) as aligned:
        with memoryview(aligned) as view:
            pool.read_into(1, 0, view[: 3 * MiB])
            assert view[: 2 * MiB] == data
            assert view[2 * MiB : 3 * MiB] == bytes(MiB)
            pool.flush()
            fd = os.open(files[1], os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            view[: 2 * MiB] = bytes(2 * MiB)
            pool.read_into(1, 0, view[: 2 * MiB])
            assert view[: 2 * MiB] == data
    assert _resident(files[1]) < 256 * 1024
    assert pool.read(1, 1, 100_000) == data[1:100_001]  # unaligned buffer and offset


def test_snapshots_never_change_under_writes_in_flight(pool: ThinPool, monkeypatch) -> None:
    """Writers copy data outside the pool lock; a snapshot taken meanwhile must keep
    exactly what it saw: the commit that ends create_snap waits for writes in flight.
    A slow disk (each write sleeps first) widens the window."""
    size = 32 * BS
    pool.create_thin(1, size)
    pool.write(1, 0, bytes(size))
    pwrite = pool._pwrite

    def slow_pwrite(chunk, where):
        time.sleep(0.005)
        return pwrite(chunk, where)

    monkeypatch.setattr(pool, "_pwrite", slow_pwrite)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rounds = 0
        try:
            while not stop.is_set():
                block = (seed * 7 + rounds) % 32
                pool.write(1, block * BS, bytes([(seed + rounds) % 251]) * BS)
                rounds += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    try:
        snaps = {}
        for snap_id in range(2, 12):
            pool.create_snap(snap_id, 1)
            snaps[snap_id] = pool.read(snap_id, 0, size)
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    for snap_id, seen in snaps.items():
        data = pool.read(snap_id, 0, size)
        assert data == seen, f"snapshot {snap_id} changed after it was taken"
        for block in range(32):  # every block is one whole write: never torn
            assert len(set(data[block * BS:(block + 1) * BS])) == 1
    assert pool.check() == []


@pytest.fixture
def block_device_pool(tmp_path):
    """A pool whose data area is a loop block device: free blocks are not known to be
    zeros there, so writes keep their data under the pool lock."""
    backing = tmp_path / "data-backing"
    with open(backing, "wb") as f:
        f.truncate(32 * MiB)
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        meta = tmp_path / "metadata"
        with open(meta, "wb") as f:
            f.truncate(4 * MiB)
        ThinPool.format(meta, loop)
        p = ThinPool.open(meta, loop, min_free_pct=0)
        try:
            yield p
        finally:
            p.abandon()
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)


def test_pool_on_a_block_device(block_device_pool: ThinPool) -> None:
    pool = block_device_pool
    assert not pool.data_is_file
    pool.create_thin(1, 2 * MiB)
    pool.write(1, 0, b"\xaa" * (2 * BS))
    pool.create_thin(2, 2 * MiB)
    pool.write(2, 0, b"\xbb" * BS)
    pool.discard(2, 0, BS)  # frees a block that still holds 0xbb
    pool.flush()
    pool.write(1, 5 * BS + 100, b"new")  # a partial write to a fresh block: the rest must read as zeros
    assert pool.read(1, 5 * BS, BS) == bytes(100) + b"new" + bytes(BS - 103)
    pool.create_snap(3, 1)
    pool.write(1, 10, b"changed")
    assert pool.read(3, 0, 2 * BS) == b"\xaa" * (2 * BS)
    assert pool.read(1, 0, 20) == b"\xaa" * 10 + b"changed" + b"\xaa" * 3
    assert pool.check() == []


def _queued_pool(tmp_path):
    """A queue-policy pool of 4 blocks, 3 of them used by device 9; device 1 is empty."""
    pool = ThinPool.open(*make_files(tmp_path, data_size=4 * BS), min_free_pct=0, no_space_policy="queue",
                         queue_timeout=10)
    pool.create_thin(1, 8 * BS)
    pool.create_thin(9, 8 * BS)
    pool.write(9, 0, b"f" * (3 * BS))
    pool.flush()
    return pool


def _wait_until(condition) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_write_waiting_for_space_never_lands_in_a_reused_block(tmp_path):
    """A two-block write maps the last free block, then waits for space (the lock is
    released). That block is discarded, committed and given to another device meanwhile:
    the waiting write must have written it before it let the lock go."""
    pool = _queued_pool(tmp_path)
    try:
        writer = threading.Thread(target=pool.write, args=(1, 0, b"X" * (2 * BS)))
        writer.start()
        _wait_until(lambda: pool.mappings(1))
        with pool.locked():
            pool.discard(1, 0, 2 * BS)
            pool.flush()
            pool.create_thin(3, 8 * BS)
            pool.write(3, 0, b"D" * BS)
        pool.delete(9)  # space for the waiting write
        writer.join()
        assert pool.read(3, 0, BS) == b"D" * BS
        assert pool.check() == []
    finally:
        pool.close()


def test_device_deleted_while_a_write_waits_for_space(tmp_path):
    pool = _queued_pool(tmp_path)
    try:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                pool.write(1, 0, b"X" * (2 * BS))
            except DeviceNotFound as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        _wait_until(lambda: pool.mappings(1))
        pool.delete(1)
        pool.delete(9)
        writer.join()
        assert len(errors) == 1
        assert pool.check() == []
    finally:
        pool.close()


def test_commit_inside_a_write_never_commits_unwritten_blocks(tmp_path):
    """A write whose block allocation commits (to reuse freed blocks) writes the blocks it
    mapped first: a crash after that commit finds the old or the new bytes, never zeros."""
    meta, data = make_files(tmp_path, data_size=4 * BS)
    pool = ThinPool.open(meta, data, min_free_pct=0)
    pool.create_thin(1, 8 * BS)
    pool.create_thin(9, 8 * BS)
    pool.write(1, 0, b"A" * (2 * BS))
    pool.create_snap(2, 1)
    pool.write(9, 0, b"f" * BS)  # 3 blocks used, 1 free
    pool.discard(9, 0, BS)  # 1 freed, reusable after the next commit

    class Crash(Exception):
        pass

    def crash(*args):
        raise Crash

    pool._write_runs = crash  # the process dies before any byte reaches the data file
    with pytest.raises(Crash):
        pool.write(1, 0, b"B" * (2 * BS))
    pool.abandon()
    with ThinPool.open(meta, data, min_free_pct=0) as reopened:
        assert reopened.read(1, 0, 2 * BS) == b"A" * (2 * BS)
        assert reopened.check() == []


def test_failed_copy_on_write_does_not_leak_its_block(pool: ThinPool, monkeypatch) -> None:
    pool.create_thin(1, MiB)
    pool.write(1, 0, b"a" * BS)
    pool.create_snap(2, 1)

    def failing_copy(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pool, "_copy_block", failing_copy)
    with pytest.raises(OSError):
        pool.write(1, 10, b"b")  # a partial write into a shared block must copy it first
    monkeypatch.undo()
    assert pool.read(1, 0, BS) == b"a" * BS
    assert pool.check() == []
    pool.write(1, 10, b"b")
    assert pool.read(2, 0, BS) == b"a" * BS
    assert pool.check() == []


def test_write_waiting_for_space_respects_a_write_made_meanwhile(tmp_path, monkeypatch):
    """Write A waits for space to copy a shared block; meanwhile write B copies it and is
    still writing its part outside the lock when A goes on. A must then write in place
    (the block is B's now), not copy it again and drop B's bytes."""
    pool = ThinPool.open(*make_files(tmp_path, data_size=4 * BS), min_free_pct=0, no_space_policy="queue",
                         queue_timeout=10)
    try:
        pool.create_thin(1, 8 * BS)
        pool.write(1, 0, b"o" * BS)
        pool.create_snap(2, 1)  # block 0 shared: writing it needs a new block
        pool.create_thin(9, 8 * BS)
        pool.write(9, 0, b"f" * (3 * BS))  # the pool is full
        a_waiting, b_writing = threading.Event(), threading.Event()
        pwrite, wait = pool._pwrite, pool._space.wait

        def slow_pwrite(chunk, where):
            if bytes(chunk[:1]) == b"B":
                b_writing.set()
                time.sleep(0.3)
            return pwrite(chunk, where)

        def slow_wake(timeout=None):  # A wakes only once B is writing outside the lock
            a_waiting.set()
            woke = wait(timeout)
            while pool._data_free and not b_writing.is_set():
                wait(0.01)
            return woke

        monkeypatch.setattr(pool, "_pwrite", slow_pwrite)
        monkeypatch.setattr(pool._space, "wait", slow_wake)
        writer_a = threading.Thread(target=pool.write, args=(1, 0, b"A" * 100))
        writer_a.start()
        assert a_waiting.wait(10)
        pool.delete(9)
        writer_b = threading.Thread(target=pool.write, args=(1, 1000, b"B" * 100))
        writer_b.start()
        writer_a.join()
        writer_b.join()
        data = pool.read(1, 0, BS)
        assert data[:100] == b"A" * 100 and data[1000:1100] == b"B" * 100
        assert data[100:1000] == b"o" * 900
        assert pool.read(2, 0, BS) == b"o" * BS
        assert pool.check() == []
    finally:
        pool.close()
