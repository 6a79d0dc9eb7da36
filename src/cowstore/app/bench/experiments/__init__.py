"""The experiments of `cowstore bench`, in report order; each tests one claim of the talk
"Deep dive into Docker storage drivers" and, for some drivers, cowstore's own targets.

Peers are not an experiment of their own: experiments 1, 2 and 6 measure them beside
the drivers, and so do 11 to 15 (the edges: the CLI, import, load, commit,
save); the report's last section gives the ratios.
"""

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.btrfs_chunks import BtrfsChunks
from cowstore.app.bench.experiments.cli_round_trip import CliRoundTrip
from cowstore.app.bench.experiments.commit_cli import CommitCli
from cowstore.app.bench.experiments.commit_diff import CommitDiff
from cowstore.app.bench.experiments.container_cost import ContainerCost
from cowstore.app.bench.experiments.containerd_run import ContainerdRun
from cowstore.app.bench.experiments.copy_up import CopyUp
from cowstore.app.bench.experiments.deep_layers import DeepLayers
from cowstore.app.bench.experiments.import_rootfs import ImportRootfs
from cowstore.app.bench.experiments.load_archive import LoadArchive
from cowstore.app.bench.experiments.page_cache import PageCache
from cowstore.app.bench.experiments.pull_push import Pull, Push
from cowstore.app.bench.experiments.save_archive import SaveArchive
from cowstore.app.bench.experiments.seq_write import SeqWrite
from cowstore.app.bench.experiments.thin_pool import ThinPool
from cowstore.app.bench.experiments.vfs_linear import VfsLinear
from cowstore.app.bench.experiments.walk import Walk

ALL: tuple[Experiment, ...] = (
    ContainerCost(),
    CopyUp(),
    PageCache(),
    SeqWrite(),
    DeepLayers(),
    CommitDiff(),
    ThinPool(),
    BtrfsChunks(),
    VfsLinear(),
    Walk(),
    CliRoundTrip(),
    ImportRootfs(),
    LoadArchive(),
    CommitCli(),
    SaveArchive(),
    Pull(),
    Push(),
    ContainerdRun(),
)
PEER_EXPERIMENTS = (
    "container_cost",
    "copy_up",
    "commit_diff",
    "cli",
    "import",
    "load",
    "commit",
    "save",
    "pull",
    "push",
)

__all__ = ["ALL", "PEER_EXPERIMENTS", "Context", "Experiment", "Metric", "Point", "Result", "Verdict"]
