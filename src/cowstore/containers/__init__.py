"""Containers: storage for a container's root filesystem (an -init and a read-write layer)."""

from cowstore.containers.store import (
    INIT_PATHS,
    Container,
    ContainerExists,
    ContainerMounted,
    ContainerNotFound,
    ContainerStore,
    init_layer,
)

__all__ = [
    "INIT_PATHS",
    "Container",
    "ContainerExists",
    "ContainerMounted",
    "ContainerNotFound",
    "ContainerStore",
    "init_layer",
]
