from cowstore.cli import main

main(prog_name="cowstore")
