"""TLS settings per registry: CAs and client certificates where Docker and podman keep them.

For registry `host:port`, the files of `--cert-dir DIR` when given, else of
`/etc/containers/certs.d/host:port/` and `/etc/docker/certs.d/host:port/`, are used as
both tools read them: `*.crt` are CAs trusted in addition to the system's, and a
`NAME.cert` with its `NAME.key` is a client certificate. The files tried are kept so a
verification failure can name them.
"""

from __future__ import annotations

import os
import pathlib
import ssl
from dataclasses import dataclass, field

from cowstore.errors import InvalidArgument

CERTS_DIRS = (pathlib.Path("/etc/containers/certs.d"), pathlib.Path("/etc/docker/certs.d"))


class BadCertificate(InvalidArgument):
    """A CA or client certificate file in a certs directory cannot be loaded."""


@dataclass
class TLSConfig:
    """The SSL context for one registry and the CA files it trusts besides the system's."""

    context: ssl.SSLContext
    verify: bool
    ca_files: list[str] = field(default_factory=list)

    def describe_cas(self) -> str:
        """The CA files tried, for an error message."""
        paths = ssl.get_default_verify_paths()
        system = paths.cafile or paths.capath or "the system CA store"
        return ", ".join([*self.ca_files, f"system CAs ({system})"])


def cert_dirs(host: str, cert_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """The directories whose certificates apply to `host` (existing ones only)."""
    if cert_dir is not None:
        candidates = [pathlib.Path(cert_dir)]
    else:
        candidates = [base / host for base in CERTS_DIRS]
    return [path for path in candidates if path.is_dir()]


def tls_config(host: str, cert_dir: str | os.PathLike | None = None, *, verify: bool = True) -> TLSConfig:
    """An SSL context for `host`: system CAs plus the certs directories' (see module docstring)."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    config = TLSConfig(context, verify)
    for directory in cert_dirs(host, cert_dir):
        for path in sorted(directory.iterdir()):
            try:
                if path.suffix == ".crt":
                    config.ca_files.append(str(path))
                    if verify:
                        context.load_verify_locations(cafile=str(path))
                elif path.suffix == ".cert":
                    key = path.with_suffix(".key")
                    if not key.exists():
                        raise BadCertificate(f"client certificate {path} has no key {key.name} beside it")
                    context.load_cert_chain(str(path), str(key))
            except (ssl.SSLError, OSError) as exc:
                raise BadCertificate(f"cannot load {path}: {exc}") from None
    return config
