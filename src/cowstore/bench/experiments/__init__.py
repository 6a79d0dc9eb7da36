"""The experiments of `cowstore bench`, in report order; each tests one claim of the talk.

Peers (experiment 10 of the issue) are not an experiment of their own: experiments 1,
2 and 6 measure them beside the drivers and the report gives the ratios.
"""

from cowstore.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.bench.experiments.btrfs_chunks import BtrfsChunks
from cowstore.bench.experiments.commit_diff import CommitDiff
from cowstore.bench.experiments.container_cost import ContainerCost
from cowstore.bench.experiments.copy_up import CopyUp
from cowstore.bench.experiments.deep_layers import DeepLayers
from cowstore.bench.experiments.page_cache import PageCache
from cowstore.bench.experiments.seq_write import SeqWrite
from cowstore.bench.experiments.thin_pool import ThinPool
from cowstore.bench.experiments.vfs_linear import VfsLinear

ALL: tuple[Experiment, ...] = (ContainerCost(), CopyUp(), PageCache(), SeqWrite(), DeepLayers(), CommitDiff(),
                               ThinPool(), BtrfsChunks(), VfsLinear())
PEER_EXPERIMENTS = ("container_cost", "copy_up", "commit_diff")

__all__ = ["ALL", "PEER_EXPERIMENTS", "Context", "Experiment", "Metric", "Point", "Result", "Verdict"]
