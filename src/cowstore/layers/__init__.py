"""The layer store: chain ids, references, container layers, crash recovery."""

from cowstore.layers.store import Layer, LayerStore, RWLayer

__all__ = ["Layer", "LayerStore", "RWLayer"]
