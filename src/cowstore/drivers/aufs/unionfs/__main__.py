"""`python -m cowstore.unionfs mount MNT --branch DIR=rw --branch DIR=ro+wh ...`

Serves one union mount in the foreground until it is unmounted (the aufs driver forks
the same server in the background instead, to keep mount latency low).
"""

from __future__ import annotations

import argparse
import logging
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
    mount.add_argument("--source", default="unionfs", help="mount source shown in the mount table")
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    from cowstore.drivers.aufs.unionfs.server import serve

    try:
        serve(
            args.mountpoint, args.branch, timeout=args.timeout, passthrough=not args.no_passthrough, source=args.source
        )
    except CowstoreError as exc:
        print(f"cowstore.unionfs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
