"""A union filesystem with aufs semantics, served over FUSE with passthrough.

`fs.UnionFS` implements the semantics, `daemon` starts and stops one server process
per mount (`python -m cowstore.unionfs mount ...`), `branches` holds aufs' naming
rules. Kept import-light: the daemon's start-up time is part of every mount.
"""
