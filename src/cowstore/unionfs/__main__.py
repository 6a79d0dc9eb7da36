"""`python -m cowstore.unionfs mount MNT --branch DIR=rw --branch DIR=ro+wh ...`

Runs one union mount in the foreground until it is unmounted; the driver starts it
detached. With --ready-fd the daemon writes "<pid> <connection> <passthrough>" there
once the kernel has completed INIT, so the starter knows the mount is usable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from cowstore.errors import CowstoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cowstore.unionfs")
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="serve a union of branches at MOUNTPOINT")
    mount.add_argument("mountpoint")
    mount.add_argument("--branch", action="append", required=True, help="DIR=rw|ro|ro+wh, top first")
    mount.add_argument("--timeout", type=float, default=10.0, help="entry/attribute cache seconds")
    mount.add_argument("--no-passthrough", action="store_true", help="serve file data in Python")
    mount.add_argument("--ready-fd", type=int, help="write the ready line to this fd, then close it")
    mount.add_argument("--source", default="unionfs", help="mount source shown in the mount table")
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(args: argparse.Namespace) -> None:
    from cowstore import fuse
    from cowstore.unionfs.branches import parse_branch
    from cowstore.unionfs.fs import UnionFS

    os.umask(0)  # modes arrive with the caller's umask already applied by the kernel
    ops = UnionFS([parse_branch(spec) for spec in args.branch], timeout=args.timeout)
    fd = fuse.open_device()
    fuse.mount_fd(fd, args.mountpoint, fstype="unionfs", source=args.source)
    try:
        session = fuse.Session(ops, fd, want_passthrough=not args.no_passthrough)
        session.handshake()
        if args.ready_fd is not None:
            conn = fuse.connection_id(args.mountpoint)
            os.write(args.ready_fd, f"{os.getpid()} {conn} {int(session.passthrough)}\n".encode())
            os.close(args.ready_fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.close(devnull)
        session.serve()
    finally:
        fuse.unmount(args.mountpoint)
        logging.getLogger("cowstore.unionfs").info("stopped serving %s", args.mountpoint)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        serve(args)
    except CowstoreError as exc:
        print(f"cowstore.unionfs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
