"""A containerd snapshotter: every cowstore driver behind containerd's snapshots API.

containerd takes external snapshotters as proxy plugins that speak its
`containerd.services.snapshots.v1.Snapshots` gRPC service on a Unix socket. This
package serves that service (`server`, `service`) from a cowstore store's snapshot
layers, with the API's messages compiled from the project's own .proto files (`api`)
and containerd's filter language for listings (`filters`).
"""
