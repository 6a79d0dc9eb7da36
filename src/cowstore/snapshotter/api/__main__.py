"""`python -m cowstore.snapshotter.api`: compile the .proto files now (`make install` runs it)."""

from cowstore.snapshotter.api import HERE, generate

generate(force=True)
print(f"cowstore: compiled the snapshots API in {HERE}")
