"""A test site's PKI in a directory: one CA (trustme) and the PEM files of the leaves issued by it."""

from __future__ import annotations

import pathlib

import trustme


class Pki:
    """`ca_file`, and `cert(name)`/`key(name)` for every leaf issued with `issue`."""

    def __init__(self, d: pathlib.Path) -> None:
        """A fresh CA; its certificate in `ca.pem`."""
        self.d = d
        self.ca = trustme.CA(organization_name="xpuctl test site")
        self.ca_file = self.write("ca.pem", self.ca.cert_pem.bytes())

    def write(self, name: str, data: bytes) -> str:
        """A file in the directory; its path."""
        (self.d / name).write_bytes(data)
        return str(self.d / name)

    def issue(self, name: str, *identities: str, ca: trustme.CA | None = None, **kwargs: object) -> None:
        """A leaf for `identities` (SANs) signed by our CA (or `ca`), as `<name>.pem` and `<name>.key`."""
        leaf = (ca or self.ca).issue_cert(*identities, **kwargs)  # type: ignore[arg-type]
        self.write(f"{name}.pem", leaf.cert_chain_pems[0].bytes())
        self.write(f"{name}.key", leaf.private_key_pem.bytes())

    def cert(self, name: str) -> str:
        return str(self.d / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.d / f"{name}.key")
