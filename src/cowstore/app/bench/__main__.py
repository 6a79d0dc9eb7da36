"""`python -m cowstore.app.bench`: the same command as `cowstore bench`."""

from cowstore.app.bench import bench_command

bench_command(prog_name="cowstore bench")
