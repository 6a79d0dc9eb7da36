from cowstore.cli import run

run()
