"""Shard ownership through etcd (DESIGN 11, issue 14): the elector of one candidate.

Talks etcd's v3 gRPC API (KV, Lease) with the generated code that the `aetcd` package ships,
over our own grpc.aio channel; decides nothing itself (controller/core/ownership.py does).

- The owner key is `<prefix>/shards/<id>/owner`, its value JSON `{"address", "boot_id", "since_ns"}`.
  A candidate takes it with one transaction: "if the key's create revision is 0 (no key), put it
  with my lease". The key's create revision is the shard's epoch.
- The owner renews its lease every `ttl_s / 5` and checks that the key is still its own; each
  confirmed renewal moves its fence (see ownership.py). Once fenced it revokes its lease (best
  effort) and campaigns afresh: a new key, a new epoch.
- A standby reads the key every `poll_s`; when it is gone, it campaigns. A key of its own address
  that it does not hold (left by this process before a quorum loss, or by its previous run)
  is revoked at once rather than waited out: etcd re-arms every lease on a new raft leader, so such
  a ghost could otherwise block the shard for a whole TTL after quorum is back (notes/scale-out 3.1).
- One channel to every member (a gRPC multi-address target): losing one member is invisible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
import urllib.parse
from collections.abc import Callable

import grpc
import grpc.aio
import msgspec
from aetcd import rpc  # etcd's generated v3 API (etcdserverpb); the package's client is not used

from xpuctl.controller.core import desired, ownership

log = logging.getLogger("xpu.controller.etcd")

# short reconnect backoff: a restarted member is used again within a second (notes/scale-out 3.1)
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
]

RETRY_S = 0.1  # an owner's next renewal after a failed one

OnChange = Callable[[str, str], None]  # (what: acquired|fenced|lost|observed, message)


class EndpointError(ValueError):
    """An `--etcd` value that cannot be used."""


def target(urls: str) -> str:
    """A gRPC target over every member of `http://HOST:PORT[,http://HOST:PORT...]`.

    Host names are resolved once, here (a multi-address target takes addresses only).

    Raises:
        EndpointError: the message names the bad part and the expected form.
    """
    addresses: list[str] = []
    family = ""
    for part in (p.strip() for p in urls.split(",")):
        if not part:
            continue
        url = urllib.parse.urlsplit(part if "://" in part else f"http://{part}")
        if url.scheme not in ("http", "") or not url.hostname or url.port is None:
            msg = f"etcd endpoint {part!r}: expected http://HOST:PORT (TLS to etcd is not supported yet)"
            raise EndpointError(msg)
        try:
            infos = socket.getaddrinfo(url.hostname, url.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            msg = f"etcd endpoint {part!r}: cannot resolve {url.hostname!r}: {exc.strerror}"
            raise EndpointError(msg) from exc
        af, *_, sockaddr = infos[0]
        this = "ipv6" if af == socket.AF_INET6 else "ipv4"
        if family and this != family:
            msg = f"etcd endpoints {urls!r} mix IPv4 and IPv6; give one family"
            raise EndpointError(msg)
        family = this
        host = f"[{sockaddr[0]}]" if this == "ipv6" else str(sockaddr[0])
        addresses.append(f"{host}:{url.port}")
    if not addresses:
        msg = "no etcd endpoint given: --etcd http://HOST:PORT[,http://HOST:PORT...]"
        raise EndpointError(msg)
    return f"{family}:{','.join(addresses)}"


def owner_key(prefix: str, shard: str) -> bytes:
    """The key that names a shard's owner."""
    return f"{prefix.rstrip('/')}/shards/{shard}/owner".encode()


class SiteBudget(msgspec.Struct, frozen=True):
    """The value of `site/budget` (issue 15): the gateway's SetPowerBudget writes it, the root reads it."""

    budget_w: float


class SiteKeys:
    """The site budget's keys under a prefix (issue 15; controller/root.py says what each holds)."""

    def __init__(self, prefix: str) -> None:
        """Keys under `prefix` (default `/xpu/v1`)."""
        self.prefix = prefix.rstrip("/")
        self.budget = f"{self.prefix}/site/budget".encode()
        self.shards = f"{self.prefix}/shards/".encode()
        self.root_prefix = f"{self.prefix}/root"

    def of(self, shard: str, what: str) -> bytes:
        """`shards/<shard>/<what>`."""
        return f"{self.prefix}/shards/{shard}/{what}".encode()

    def split(self, key: bytes) -> tuple[str, str]:
        """(shard, what) of a key under `shards/`."""
        shard, _, what = key[len(self.shards) :].decode(errors="replace").partition("/")
        return shard, what


class Etcd:
    """The few etcd calls the elector needs, each under a deadline."""

    def __init__(self, urls: str, *, timeout_s: float = 1.0) -> None:
        """Parse the endpoints (raises EndpointError); connects lazily."""
        self.target = target(urls)
        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close(None)

    async def get(self, key: bytes) -> object | None:
        """The key's KeyValue, or None."""
        reply = await self.kv.Range(rpc.RangeRequest(key=key), timeout=self.timeout_s)
        return reply.kvs[0] if reply.kvs else None

    async def owners(self, prefix: str) -> dict[str, tuple[str, int]]:
        """Every shard that has an owner now: shard id -> (its address, its epoch)."""
        start = f"{prefix.rstrip('/')}/shards/".encode()
        end = start[:-1] + bytes([start[-1] + 1])  # every key under the prefix
        reply = await self.kv.Range(rpc.RangeRequest(key=start, range_end=end), timeout=self.timeout_s)
        out: dict[str, tuple[str, int]] = {}
        for kv in reply.kvs:
            shard, _, leaf = bytes(kv.key)[len(start) :].decode(errors="replace").partition("/")
            if leaf == "owner" and (address := _address_of(kv)):
                out[shard] = (address, int(kv.create_revision))
        return out

    async def put(self, key: bytes, value: bytes) -> None:
        """Put `key` (no condition: an operator's decision)."""
        await self.kv.Put(rpc.PutRequest(key=key, value=value), timeout=self.timeout_s)

    async def put_fenced(self, key: bytes, value: bytes, *, owner: bytes, epoch: int, lease: int = 0) -> bool:
        """Put `key` only while `owner`'s create revision is `epoch` (the writer still owns); False if not."""
        compare = rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=owner, create_revision=epoch)
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))
        reply = await self.kv.Txn(rpc.TxnRequest(compare=[compare], success=[put]), timeout=self.timeout_s)
        return bool(reply.succeeded)

    async def under(self, prefix: bytes) -> dict[bytes, bytes]:
        """Every key under `prefix` with its value (a linearizable read)."""
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        reply = await self.kv.Range(rpc.RangeRequest(key=prefix, range_end=end), timeout=self.timeout_s)
        return {bytes(kv.key): bytes(kv.value) for kv in reply.kvs}

    async def grant(self, ttl_s: float) -> int:
        """A new lease's id."""
        reply = await self.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=math.ceil(ttl_s)), timeout=self.timeout_s)
        return int(reply.ID)

    async def keep_alive(self, lease_id: int) -> int:
        """Renew a lease once; the TTL left (0 or less: the lease is gone)."""
        call = self.lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.timeout_s)
        async for reply in call:
            return int(reply.TTL)
        return 0

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease (its keys go with it); a lease that is already gone is not an error."""
        try:
            await self.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def create(self, key: bytes, value: bytes, lease_id: int) -> tuple[bool, int, object | None]:
        """Put `key` only if it does not exist: (created, its create revision, the existing KeyValue)."""
        compare = rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=0)
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease_id))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        reply = await self.kv.Txn(request, timeout=self.timeout_s)
        if reply.succeeded:
            return True, int(reply.header.revision), None
        kvs = reply.responses[0].response_range.kvs
        return False, int(kvs[0].create_revision) if kvs else 0, kvs[0] if kvs else None


def _address_of(kv: object) -> str:
    try:
        value = json.loads(kv.value)  # type: ignore[attr-defined]  # etcd's KeyValue, untyped
        return str(value.get("address", ""))
    except (ValueError, AttributeError):
        return ""


class Elector:
    """Campaigns for one shard and keeps its lease while it owns it."""

    def __init__(
        self,
        etcd: Etcd,
        own: ownership.Ownership,
        *,
        boot_id: str,
        prefix: str = "/xpu/v1",
        poll_s: float = 0.5,
        on_change: OnChange | None = None,
    ) -> None:
        """Nothing happens until `run`."""
        self.etcd = etcd
        self.own = own
        self.boot_id = boot_id
        self.key = owner_key(prefix, own.shard)
        self.poll_s = poll_s
        self.renew_s = own.ttl_s / 5
        self.on_change = on_change or (lambda _what, _message: None)
        self.lease_id = 0
        self.errors = 0
        self.stale_keys_revoked = 0
        self._last_error = ""

    async def run(self) -> None:
        """Campaign and renew until cancelled; revoke the lease on the way out (a clean handover)."""
        try:
            while True:
                failed = False
                try:
                    if self.own.role == "owner":
                        await self._renew()
                    else:
                        await self._campaign()
                    self._last_error = ""
                except grpc.aio.AioRpcError as exc:
                    failed = True
                    self.errors += 1
                    why = f"{exc.code().name}: {exc.details()}"
                    if why != self._last_error:
                        log.warning("etcd %s: %s", self.etcd.target, why)
                    self._last_error = why
                self._fence_if_due()
                if self.own.role == "owner":  # a failed renewal is tried again at once (a raft election)
                    await asyncio.sleep(RETRY_S if failed else self.renew_s)
                else:
                    await asyncio.sleep(self.poll_s)
        finally:
            if self.lease_id:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                    await asyncio.shield(self.etcd.revoke(self.lease_id))

    def _fence_if_due(self) -> None:
        if self.own.check(time.monotonic()):
            self.on_change("fenced", f"shard {self.own.shard}: lease not confirmed in time; stopped acting")

    async def _renew(self) -> None:
        sent = time.monotonic()
        ttl = await self.etcd.keep_alive(self.lease_id)
        kv = await self.etcd.get(self.key) if ttl > 0 else None
        if ttl <= 0 or kv is None or int(kv.lease) != self.lease_id:  # type: ignore[attr-defined]
            self.lease_id = 0
            self.own.lost()
            self.on_change("lost", f"shard {self.own.shard}: the owner key or its lease is gone; campaigning again")
            return
        if self.own.role == "owner":
            self.own.renewed(sent, float(ttl))

    async def _campaign(self) -> None:
        if self.own.role == "fenced" and self.lease_id:
            lease, self.lease_id = self.lease_id, 0
            await self.etcd.revoke(lease)
        if self.own.role == "fenced":
            self.own.lost()
        kv = await self.etcd.get(self.key)
        if kv is not None:
            address = _address_of(kv)
            if address == self.own.address and int(kv.lease) != self.lease_id:  # type: ignore[attr-defined]
                await self.etcd.revoke(int(kv.lease))  # type: ignore[attr-defined]
                self.stale_keys_revoked += 1
                log.info("shard %s: revoked a stale owner key of this address", self.own.shard)
                kv = None
            else:
                self._observe(address, int(kv.create_revision))  # type: ignore[attr-defined]
                return
        sent = time.monotonic()
        self.lease_id = await self.etcd.grant(self.own.ttl_s)
        value = json.dumps({"address": self.own.address, "boot_id": self.boot_id, "since_ns": time.time_ns()})
        created, epoch, existing = await self.etcd.create(self.key, value.encode(), self.lease_id)
        if created:
            self.own.acquired(epoch, sent)
            self.on_change("acquired", f"shard {self.own.shard}: this controller owns it now, epoch {epoch}")
            return
        lease, self.lease_id = self.lease_id, 0
        await self.etcd.revoke(lease)
        self._observe(_address_of(existing) if existing is not None else "", epoch)

    def _observe(self, address: str, epoch: int) -> None:
        if (address, epoch) != (self.own.owner_address, self.own.epoch):
            self.own.observed(address, epoch)
            self.on_change("observed", f"shard {self.own.shard}: owned by {address or '?'} (epoch {epoch})")


class NotOwnerError(OSError):
    """A save refused by etcd: this controller no longer owns the shard (the owner key changed)."""


class EtcdStore:
    """`desired.Store` in etcd (issue 14.4): `<prefix>/shards/<id>/desired`, written only by the owner.

    Each save is a transaction that puts the state only if the owner key's create revision is
    still this owner's epoch: a deposed owner cannot overwrite its successor's decisions. Calls
    are blocking (the service saves from a thread, and loads once when it takes the shard over).
    """

    def __init__(self, urls: str, *, shard: str, prefix: str, epoch: Callable[[], int], timeout_s: float = 2.0) -> None:
        """Parse the endpoints (raises EndpointError); connects lazily."""
        self.channel = grpc.insecure_channel(target(urls), options=CHANNEL_OPTIONS)
        self.kv = rpc.KVStub(self.channel)
        self.owner = owner_key(prefix, shard)
        self.key = f"{prefix.rstrip('/')}/shards/{shard}/desired".encode()
        self.where = f"etcd {self.key.decode()}"
        self.epoch = epoch
        self.timeout_s = timeout_s

    def load(self) -> desired.Desired | None:
        """The saved state; None when nothing was saved yet.

        Raises:
            desired.Corrupt: what is saved cannot be read, or etcd cannot be read (named).
        """
        try:
            reply = self.kv.Range(rpc.RangeRequest(key=self.key), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise desired.Corrupt(f"{self.where}: cannot read it ({_why(exc)})") from exc
        if not reply.kvs:
            return None
        try:
            return desired.decode(bytes(reply.kvs[0].value))
        except desired.Corrupt as exc:
            raise desired.Corrupt(f"{self.where}: {exc}; delete the key (etcdctl del {self.key.decode()})") from exc

    def save(self, d: desired.Desired) -> None:
        """Put `d` while this owner's key still stands.

        Raises:
            NotOwnerError: the shard has another owner (or none) now.
            OSError: etcd could not be reached.
        """
        compare = rpc.Compare(
            result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=self.owner, create_revision=self.epoch()
        )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=self.key, value=desired.encode(d)))
        try:
            reply = self.kv.Txn(rpc.TxnRequest(compare=[compare], success=[put]), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise OSError(f"etcd: {_why(exc)}") from exc
        if not reply.succeeded:
            msg = f"this controller no longer owns the shard (epoch {self.epoch()}); not saved"
            raise NotOwnerError(msg)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def _why(exc: grpc.RpcError) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    return f"{code().name}: {details()}" if callable(code) and callable(details) else str(exc)
