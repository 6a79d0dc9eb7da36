"""Pull and push over the OCI distribution API: images move between machines through registries.

A front end over the store: it speaks the registry protocol (distribution-spec v1.1,
Docker's token auth) with urllib3, keeps what Docker keeps as "distribution metadata"
(records.py) and the exact registry blobs (blobstore.py), and hands layers to the layer
store and configs to the image store like `load` does.
"""

from cowstore.distribution.client import Settings
from cowstore.distribution.credentials import Credential
from cowstore.distribution.login import login, logout
from cowstore.distribution.login import registry_host as login_host
from cowstore.distribution.manifests import Platform
from cowstore.distribution.pull import Pulled, Puller, tidy
from cowstore.distribution.push import COMPRESSIONS, Pushed, Pusher
from cowstore.distribution.transport import RetryPolicy

__all__ = [
    "COMPRESSIONS",
    "Credential",
    "Platform",
    "Pulled",
    "Puller",
    "Pushed",
    "Pusher",
    "RetryPolicy",
    "Settings",
    "login",
    "login_host",
    "logout",
    "tidy",
]
