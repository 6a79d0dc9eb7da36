"""containerd's Snapshots service over the store's snapshot layers.

Each RPC is translated to one call of `LayerStore.snapshots` and back: keys, names,
kinds, parents and labels as containerd means them (snapshots/snapshotter.go), mounts
as the driver describes them for an external mounter, and errors as the gRPC status
codes containerd's proxy turns back into its own errors. The namespace comes from the
`containerd-namespace` gRPC metadata and keeps key spaces apart; a call without one
(containerd's garbage collector makes those) sees every namespace.

The store's database connection and locks serve one thread at a time, so RPCs run one
after another; a List answers from a snapshot of the rows taken under that lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from cowstore import errors
from cowstore.drivers import MountSpec
from cowstore.errors import CowstoreError
from cowstore.layers import LayerStore
from cowstore.layers.snapshotrecords import Snapshot
from cowstore.snapshotter import filters
from cowstore.snapshotter.api import mount_pb2
from cowstore.snapshotter.api import snapshots_pb2 as pb

SERVICE = "containerd.services.snapshots.v1.Snapshots"
NAMESPACE_HEADER = "containerd-namespace"
_LIST_BATCH = 100  # infos per streamed message, as containerd's own snapshots service sends
_KINDS = {"view": pb.VIEW, "active": pb.ACTIVE, "committed": pb.COMMITTED}
_CODES: dict[type[CowstoreError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InUse: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotSupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Corrupt: grpc.StatusCode.DATA_LOSS,
}

Request = TypeVar("Request")
Response = TypeVar("Response")


def status_code(exc: CowstoreError) -> grpc.StatusCode:
    """The gRPC code of an error's category (containerd's errdefs mapping)."""
    category = errors.category(exc)
    return _CODES.get(category, grpc.StatusCode.UNKNOWN) if category else grpc.StatusCode.UNKNOWN


def namespace_of(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_HEADER:
            return str(value)
    return None


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def info_message(snap: Snapshot) -> pb.Info:
    return pb.Info(
        name=snap.key,
        parent=snap.parent_key or "",
        kind=_KINDS[snap.kind],
        created_at=_timestamp(snap.created_ns),
        updated_at=_timestamp(snap.updated_ns),
        labels=snap.labels,
    )


def mount_messages(mounts: list[MountSpec]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


def _adaptor(snap: Snapshot) -> filters.Adaptor:
    """Fields a filter may name, as containerd's snapshot adaptor offers them."""

    def field(path: list[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] == "kind":
            return snap.kind, True
        if path[0] == "name":
            return snap.key, True
        if path[0] == "parent":
            return snap.parent_key or "", True
        if path[0] == "labels" and snap.labels:
            key = ".".join(path[1:])
            return snap.labels.get(key, ""), key in snap.labels
        return "", False

    return field


def updated_labels(current: dict[str, str], info: pb.Info, paths: list[str]) -> dict[str, str]:
    """containerd's Update: labels only, all of them, or `labels.<key>` one by one."""
    for path in paths:
        if path != "labels" and not path.startswith("labels."):
            raise errors.InvalidArgument(f"cannot update {path!r} field on snapshot {info.name!r}")
    if not paths:
        return dict(info.labels)
    labels = dict(current)
    for path in paths:
        if path == "labels":
            labels = dict(info.labels)
        else:
            key = path.removeprefix("labels.")
            if info.labels.get(key):
                labels[key] = info.labels[key]
            else:
                labels.pop(key, None)
    return labels


class SnapshotService:
    """The RPC handlers; `handler()` registers them with a grpc server."""

    def __init__(self, layers: LayerStore) -> None:
        self.layers = layers
        self.snapshots = layers.snapshots
        self._lock = threading.Lock()

    # ---- RPCs -------------------------------------------------------------------------

    def prepare(self, request: pb.PrepareSnapshotRequest, ns: str | None) -> pb.PrepareSnapshotResponse:
        _, mounts = self.snapshots.create(
            ns, request.key, request.parent or None, kind="active", labels=dict(request.labels)
        )
        return pb.PrepareSnapshotResponse(mounts=mount_messages(mounts))

    def view(self, request: pb.ViewSnapshotRequest, ns: str | None) -> pb.ViewSnapshotResponse:
        _, mounts = self.snapshots.create(
            ns, request.key, request.parent or None, kind="view", labels=dict(request.labels)
        )
        return pb.ViewSnapshotResponse(mounts=mount_messages(mounts))

    def mounts(self, request: pb.MountsRequest, ns: str | None) -> pb.MountsResponse:
        return pb.MountsResponse(mounts=mount_messages(self.snapshots.mounts(ns, request.key)))

    def commit(self, request: pb.CommitSnapshotRequest, ns: str | None) -> empty_pb2.Empty:
        self.snapshots.commit(ns, request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    def remove(self, request: pb.RemoveSnapshotRequest, ns: str | None) -> empty_pb2.Empty:
        self.snapshots.remove(ns, request.key)
        return empty_pb2.Empty()

    def stat(self, request: pb.StatSnapshotRequest, ns: str | None) -> pb.StatSnapshotResponse:
        return pb.StatSnapshotResponse(info=info_message(self.snapshots.get(ns, request.key)))

    def update(self, request: pb.UpdateSnapshotRequest, ns: str | None) -> pb.UpdateSnapshotResponse:
        current = self.snapshots.get(ns, request.info.name)
        labels = updated_labels(current.labels, request.info, list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_message(self.snapshots.set_labels(ns, request.info.name, labels)))

    def list(self, request: pb.ListSnapshotsRequest, ns: str | None) -> list[pb.ListSnapshotsResponse]:
        wanted = filters.parse(list(request.filters))
        infos = [info_message(s) for s in self.snapshots.snapshots(ns) if filters.matches(wanted, _adaptor(s))]
        batches = [infos[i : i + _LIST_BATCH] for i in range(0, len(infos), _LIST_BATCH)]
        return [pb.ListSnapshotsResponse(info=batch) for batch in batches]

    def usage(self, request: pb.UsageRequest, ns: str | None) -> pb.UsageResponse:
        size, inodes = self.snapshots.usage(ns, request.key)
        return pb.UsageResponse(size=size, inodes=inodes)

    def cleanup(self, request: pb.CleanupRequest, ns: str | None) -> empty_pb2.Empty:
        """Removal frees storage at once; what is left to clean is what a crash interrupted."""
        self.layers.recover()
        return empty_pb2.Empty()

    # ---- plumbing ---------------------------------------------------------------------

    def _run(
        self, method: Callable[[Any, str | None], Response], request: Any, context: grpc.ServicerContext
    ) -> Response:
        try:
            with self._lock:
                return method(request, namespace_of(context))
        except CowstoreError as exc:
            context.abort(status_code(exc), str(exc))
            raise  # abort raises; this line only tells type checkers
        except OSError as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            raise

    def _unary(self, method: Callable[[Any, str | None], Any], request_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._run(method, request, context),
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )

    def _list(self, request: pb.ListSnapshotsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._run(self.list, request, context)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Prepare": self._unary(self.prepare, pb.PrepareSnapshotRequest),
            "View": self._unary(self.view, pb.ViewSnapshotRequest),
            "Mounts": self._unary(self.mounts, pb.MountsRequest),
            "Commit": self._unary(self.commit, pb.CommitSnapshotRequest),
            "Remove": self._unary(self.remove, pb.RemoveSnapshotRequest),
            "Stat": self._unary(self.stat, pb.StatSnapshotRequest),
            "Update": self._unary(self.update, pb.UpdateSnapshotRequest),
            "Usage": self._unary(self.usage, pb.UsageRequest),
            "Cleanup": self._unary(self.cleanup, pb.CleanupRequest),
            "List": grpc.unary_stream_rpc_method_handler(
                self._list,
                request_deserializer=pb.ListSnapshotsRequest.FromString,
                response_serializer=lambda message: message.SerializeToString(),
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)
