"""EarlyFlush: write-back started in the background, waited for at the end, nothing left running."""

from __future__ import annotations

import pathlib
import threading

from cowstore.host.writeback import EarlyFlush


def _flushers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "early flush"]


def test_kicks_then_finish_then_close(tmp_path: pathlib.Path) -> None:
    flush = EarlyFlush(tmp_path)
    try:
        for i in range(20):
            (tmp_path / f"f{i}").write_bytes(b"x" * 65536)
            flush.kick()  # at most one flush runs at a time; the others are skipped
            assert len(_flushers()) <= 1
        flush.finish()
    finally:
        flush.close()
    assert not _flushers()


def test_close_without_finish_waits_for_the_running_flush(tmp_path: pathlib.Path) -> None:
    flush = EarlyFlush(tmp_path)
    (tmp_path / "f").write_bytes(b"y" * 65536)
    flush.kick()
    flush.close()
    flush.close()  # twice is harmless
    assert not _flushers()
