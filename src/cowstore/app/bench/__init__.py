"""`cowstore bench`: measure the claims of the talk "Deep dive into Docker storage drivers"
(2015) per driver, against baselines, side by side with peers.

The command object is :data:`bench_command` (registered in the CLI as `cowstore bench`;
`python -m cowstore.app.bench` runs it too). See docs/bench/README.md for how to read the report.
"""

from cowstore.app.bench.command import bench_command

__all__ = ["bench_command"]
