"""A union filesystem with aufs semantics, served over FUSE with passthrough.

- `branches`: a branch and its mode, whiteout names;
- `resolve`: which branch shows a union path (lookups, whiteouts, opaque dirs);
- `copyup`: every change to the top branch (copy-up, whiteouts, opaque markers);
- `nodes`: the ids the kernel holds; `handles`: open files and passthrough backing ids;
- `fs`: the FUSE operations, which check requests and delegate to the above;
- `server`: the one process per driver home serving every union mount of it;
- `client`: how the driver starts, reaches and stops that server.
"""
