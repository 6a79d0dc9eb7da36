"""OS bindings that more than one part of cowstore uses: mounts, loop devices, FUSE,
safe path resolution, filesystem facts, quotas, tree copies and helper servers.

Nothing here knows layers, images or drivers; it imports only `cowstore.errors`.
"""
