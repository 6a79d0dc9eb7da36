"""`cowstore bench`: reproduce the talk's claims per driver, side by side with peers.

The command object is :data:`bench_command` (registered in the CLI as `cowstore bench`;
`python -m cowstore.bench` runs it too). See docs/bench/README.md for how to read the report.
"""

from cowstore.app.bench.command import bench_command

__all__ = ["bench_command"]
