"""Docker data roots (/var/lib/docker) of any of the six drivers, read without Docker.

`layout` reads the image, layer and container metadata, `storage` each driver's
layers (`devmapper` the devicemapper pool, mounted read-only), `tarsplit` replays a
layer's exact tar, `source` ties them together, and `transfer` and `ociexport` bring
the images and containers into a cowstore store or into an OCI layout. The data root
is never written.
"""

from cowstore.dockerroot.devmapper import PoolDevices
from cowstore.dockerroot.layout import DRIVERS, BadObject, DockerRoot, NotADockerRoot, Problem
from cowstore.dockerroot.ociexport import export_oci
from cowstore.dockerroot.source import Source
from cowstore.dockerroot.transfer import Importer, Outcome, Report

__all__ = [
    "DRIVERS",
    "BadObject",
    "DockerRoot",
    "Importer",
    "NotADockerRoot",
    "Outcome",
    "PoolDevices",
    "Problem",
    "Report",
    "Source",
    "export_oci",
]
