from cowstore.cli import console

console()
