"""The layer store: chain ids, references, container layers, crash recovery."""

from cowstore.layers.records import Layer, RWLayer
from cowstore.layers.store import LayerStore

__all__ = ["Layer", "LayerStore", "RWLayer"]
