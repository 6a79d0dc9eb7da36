"""containerd's snapshots API as this project's own .proto files, compiled by grpcio-tools.

`mount.proto` and `snapshots.proto` sit beside this file; protoc (from grpcio-tools)
turns them into `mount_pb2.py` and `snapshots_pb2.py` (with `.pyi` type stubs) in this
folder. `make install` runs that step (`python -m cowstore.snapshotter.api`); importing
this package runs it too whenever the generated modules are missing or were made from
other .proto files or another protobuf runtime, so a source checkout never serves stale
messages. The generated files are build products: never edited, not in git, and
excluded from ruff and mypy's own checks (mypy still reads their stubs).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import tempfile

from cowstore.errors import Unavailable

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = ("mount.proto", "snapshots.proto")
GENERATED = ("mount_pb2.py", "mount_pb2.pyi", "snapshots_pb2.py", "snapshots_pb2.pyi")
_STAMP = HERE / ".generated"


def _fingerprint() -> str:
    """What the generated modules depend on: the .proto texts and the protobuf runtime."""
    from google.protobuf import __version__ as protobuf_version

    digest = hashlib.sha256(protobuf_version.encode())
    for name in PROTOS:
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()


def _current(fingerprint: str) -> bool:
    try:
        stamped = _STAMP.read_text().strip()
    except FileNotFoundError:
        return False
    return stamped == fingerprint and all((HERE / name).is_file() for name in GENERATED)


def generate(*, force: bool = False) -> bool:
    """Compile the .proto files unless the generated modules are current; True if it compiled.

    Concurrent callers serialise on a lock file; the output is written to a temporary
    folder and moved into place, so an importer never sees half a module.
    """
    fingerprint = _fingerprint()
    if not force and _current(fingerprint):
        return False
    try:
        lock_fd = os.open(HERE / ".generate.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise Unavailable(
            f"cannot compile the snapshots API in {HERE} ({exc.strerror}); run `python -m cowstore.snapshotter.api` "
            "as the user that installed cowstore"
        ) from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not force and _current(fingerprint):
            return False
        _compile()
        _STAMP.write_text(fingerprint + "\n")
        return True
    finally:
        os.close(lock_fd)


def _compile() -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        raise Unavailable(
            "grpcio-tools is not installed: it compiles the snapshots API (pip install cowstore)"
        ) from None
    import importlib.resources

    src = HERE.parents[2]  # the folder holding `cowstore/`: import paths follow the proto paths
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(dir=HERE, prefix=".protoc-") as out:
        args = ["protoc", f"-I{src}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}"]
        args += [str(HERE / name) for name in PROTOS]
        if protoc.main(args) != 0:
            raise Unavailable(f"protoc failed to compile {', '.join(PROTOS)} (see its messages above)")
        built = pathlib.Path(out) / HERE.relative_to(src)
        for name in GENERATED:
            os.replace(built / name, HERE / name)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(HERE / "__pycache__")


generate()
