"""Applications built on the store: the demo (`cowstore demo`) and the benchmark (`cowstore bench`)."""
