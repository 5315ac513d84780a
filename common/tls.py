"""TLS material for gRPC and MQTT: PEM files in, credentials out, with errors that name the file.

Agents, xpuctl and the controller all load certificates the same way, so it is here (the one
package they may all import). Identity rules (notes A2, B4): a peer's identity is what its
certificate says (subject alternative names, else the common name) as gRPC's auth context
reports it, never what the peer writes in a message.
"""

from __future__ import annotations

import pathlib
import ssl
from typing import Any

import grpc
import grpc.aio
import msgspec


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; names the file and the problem."""

    def __init__(self, what: str, path: str, problem: str) -> None:
        """Keep the facts; build the message."""
        super().__init__(f"{what} {path!r}: {problem}")
        self.what, self.path, self.problem = what, path, problem


class ClientFiles(msgspec.Struct, frozen=True, kw_only=True):
    """A client's TLS files: the CA that signed the server, and our certificate and key (mTLS)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    """Expected name in the server's certificate when it differs from the address's host."""


class ServerFiles(msgspec.Struct, frozen=True, kw_only=True):
    """A server's TLS files: its certificate chain and key, and the CA its clients' certificates chain to."""

    cert_file: str
    key_file: str
    client_ca_file: str


def read_pem(what: str, path: str) -> bytes:
    """The bytes of a PEM file.

    Raises:
        TlsError: unreadable, or not PEM.
    """
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(what, path, f"cannot read it: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise TlsError(what, path, "not a PEM file (no -----BEGIN line)")
    return data


def _client_pair(cert_file: str | None, key_file: str | None) -> tuple[bytes, bytes] | None:
    """Our certificate and key as PEM bytes, or None when neither is given.

    Raises:
        TlsError: only one of them is given, or a file is missing or not PEM.
    """
    if cert_file is None and key_file is None:
        return None
    if not (cert_file and key_file):
        raise TlsError("client certificate", cert_file or key_file or "", "give both the certificate and its key")
    return read_pem("client certificate", cert_file), read_pem("client key", key_file)


def channel_credentials(files: ClientFiles) -> grpc.ChannelCredentials:
    """GRPC channel credentials: the CA, plus our certificate and key when both are given.

    Raises:
        TlsError: a file is missing or not PEM, or only one of certificate and key is given.
    """
    ca = read_pem("CA file", files.ca_file)
    pair = _client_pair(files.cert_file, files.key_file)
    cert, key = pair if pair is not None else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def read_secret(what: str, path: str) -> str:
    """A secret (token, password) from a file's first line, trimmed: never from a flag, which `ps` shows.

    Raises:
        TlsError: unreadable or empty.
    """
    try:
        lines = pathlib.Path(path).read_text().split("\n")
    except OSError as exc:
        raise TlsError(what, path, f"cannot read it: {exc.strerror}") from exc
    secret = lines[0].strip()
    if not secret:
        raise TlsError(what, path, "the first line is empty; put the secret there")
    return secret


def operator_credentials(files: ClientFiles, token: str | None) -> grpc.ChannelCredentials:
    """Channel credentials for xpuctl and schedulers: TLS (and mTLS), plus the bearer token on every call.

    gRPC sends call credentials only over TLS, so a token never travels in the clear.
    """
    creds = channel_credentials(files)
    if token is None:
        return creds
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))


def channel_options(files: ClientFiles | None) -> list[tuple[str, str]]:
    """Channel options that TLS needs (the expected server name, if overridden)."""
    if files is None or not files.server_name:
        return []
    return [("grpc.ssl_target_name_override", files.server_name)]


def secure_channel(
    target: str, files: ClientFiles | None, options: list[tuple[str, int]] | None = None
) -> grpc.aio.Channel:
    """A grpc.aio channel: TLS with `files`, plaintext without."""
    opts: list[tuple[str, int | str]] = [*(options or []), *channel_options(files)]
    if files is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, channel_credentials(files), options=opts)


def server_credentials(files: ServerFiles) -> grpc.ServerCredentials:
    """MTLS server credentials: every client must present a certificate that chains to the CA.

    Raises:
        TlsError: a file is missing or not PEM.
    """
    chain = read_pem("server certificate", files.cert_file)
    key = read_pem("server key", files.key_file)
    ca = read_pem("client CA file", files.client_ca_file)
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=True)


def peer_identities(context: grpc.aio.ServicerContext[Any, Any]) -> frozenset[str]:
    """The names in the peer's verified certificate (SANs and CN); empty without TLS."""
    auth = context.auth_context()
    names: set[str] = set()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        names.update(v.decode(errors="replace") for v in auth.get(key, []))
    return frozenset(names)


def ssl_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A client SSLContext (MQTT over TLS): verify the server with `ca_file` (None: the system's
    CAs) and present our certificate when given.

    Raises:
        TlsError: a file is missing or not PEM, or the key does not match the certificate.
    """
    if ca_file is not None:
        read_pem("CA file", ca_file)
    ctx = ssl.create_default_context(cafile=ca_file)
    if _client_pair(cert_file, key_file) is not None:
        assert cert_file is not None  # noqa: S101 - _client_pair checked both; narrows the types
        assert key_file is not None  # noqa: S101
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise TlsError("client key", key_file, f"does not match the certificate: {exc.reason}") from exc
    return ctx


def server_ssl_context(files: ServerFiles) -> ssl.SSLContext:
    """A server SSLContext that demands a client certificate from `files.client_ca_file` (the
    /metrics page under mTLS: the same certificate and CA as the gRPC listener).

    Raises:
        TlsError: a file is missing or not PEM, or the key does not match the certificate.
    """
    read_pem("client CA file", files.client_ca_file)
    read_pem("certificate", files.cert_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files.client_ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(files.cert_file, files.key_file)
    except ssl.SSLError as exc:
        raise TlsError("key", files.key_file, f"does not match the certificate: {exc.reason}") from exc
    return ctx
