"""`xpuctl k8s sync`: Kubernetes' view of each node follows xpuctl's, through the official client.

Per node that xpuctl and Kubernetes both know (the agent's node id is the Kubernetes node name):

* a node condition `XpuHealthy`: `True` while every device is fit, `False` when one is failed,
  cordoned or has a critical anomaly open (the reason says which: `DeviceFailed`,
  `DeviceCordoned`, `CriticalAnomaly`; the message names the devices, as `xpuctl slurm` does),
  `Unknown` while the node's agent is offline;
* the annotation `hami.io/device-cordon`: the uuids of its cordoned devices, comma-separated
  (HAMi's per-device cordon, notes/scheduler-integration.md 2.5); removed when none is;
* with `--taint` (off by default, like NVSentinel), the taint `xpuctl.io/unhealthy=cordoned:NoSchedule`
  while every device of the node is cordoned (a node cordon), removed after; other taints are kept;
* an Event (namespace `default`, as the kubelet's node events) for every anomaly raised.

Conditions, annotations and taints are written only when they change. Nodes are judged as events
come (WatchEvents) and all again every `--reconcile-s`; `--once` judges all once and exits (cron).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

from xpuctl.client import AsyncClient, ClientError, Tls
from xpuctl.controller.ctl import follow, slurm
from xpuctl.protos import names
from xpuctl.protos.xpu.v1 import cluster_pb2 as cpb

CONDITION = "XpuHealthy"
CORDON_ANNOTATION = "hami.io/device-cordon"
TAINT_KEY = "xpuctl.io/unhealthy"
EVENT_NAMESPACE = "default"


def condition_of(devices: Iterable[cpb.Device]) -> tuple[str, str, str]:
    """(status, reason, message) of the XpuHealthy condition for a node with these devices."""
    devices = list(devices)
    if not devices:
        return "Unknown", "NoDevices", "xpuctl knows no device on this node"
    if all(d.node_status != names.NODE_ONLINE for d in devices):
        return "Unknown", "NodeOffline", "its xpuctl agent is not streaming: device health is not known"
    problems = slurm.unfit(devices)
    if not problems:
        return "True", "AllDevicesHealthy", f"{len(devices)} device(s) healthy"
    first = problems[0].what
    reason = "DeviceFailed" if first == "failed" else "DeviceCordoned" if first == "cordoned" else "CriticalAnomaly"
    message = "; ".join(p.text for p in problems)
    return "False", reason, message if len(message) <= 1024 else message[:1021] + "..."


def cordoned_devices(devices: Iterable[cpb.Device]) -> str:
    """The HAMi annotation's value: uuids of the cordoned devices, comma-separated ("" for none)."""
    return ",".join(sorted(d.info.uuid for d in devices if d.cordoned))


def node_cordoned(devices: Iterable[cpb.Device]) -> bool:
    """Every device of the node cordoned (a node cordon)."""
    devices = list(devices)
    return bool(devices) and all(d.cordoned for d in devices)


def camel(kind: str) -> str:
    """`thermal_rise` -> `XpuThermalRise` (an Event's reason)."""
    return "Xpu" + "".join(part.capitalize() for part in kind.split("_"))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """The few Kubernetes calls sync makes, through the official client (imported here only)."""

    def __init__(self, kubeconfig: str | None, timeout_s: float) -> None:
        """In-cluster configuration when there is one and no kubeconfig is given, else kubeconfig.

        Raises:
            RuntimeError: no configuration can be loaded (the message says what was tried).
        """
        from kubernetes import client, config  # noqa: PLC0415 - only `xpuctl k8s` needs it

        try:
            if kubeconfig is None:
                try:
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
                except config.ConfigException:
                    config.load_kube_config()  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            msg = f"no Kubernetes configuration: not in a cluster, and {kubeconfig or '~/.kube/config'}: {exc}"
            raise RuntimeError(msg) from exc
        self.api = client.CoreV1Api()
        self.models = client
        self.timeout_s = timeout_s
        self.instance = socket.gethostname()

    def nodes(self) -> dict[str, Any]:
        """Every node by name."""
        return {
            str(n.metadata.name): n for n in self.api.list_node(_request_timeout=self.timeout_s).items if n.metadata
        }

    def apply(self, node: Any, devices: list[cpb.Device], *, taint: bool) -> list[str]:  # noqa: ANN401 - V1Node
        """Bring one node's condition, annotation and taint to what its devices say; what changed."""
        name = node.metadata.name
        changed = []
        status, reason, message = condition_of(devices)
        now = _now()
        have = next((c for c in (node.status.conditions or []) if c.type == CONDITION), None)
        if have is None or (have.status, have.reason, have.message) != (status, reason, message):
            since = now if have is None or have.status != status else _stamp(have.last_transition_time)
            body = {
                "status": {
                    "conditions": [
                        {
                            "type": CONDITION,
                            "status": status,
                            "reason": reason,
                            "message": message,
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": since,
                        }
                    ]
                }
            }
            self.api.patch_node_status(name, body, _request_timeout=self.timeout_s)
            changed.append(f"{CONDITION}={status} ({reason}: {message})")
        annotations = node.metadata.annotations or {}
        value = cordoned_devices(devices)
        if annotations.get(CORDON_ANNOTATION, "") != value:
            patch: dict[str, Any] = {"metadata": {"annotations": {CORDON_ANNOTATION: value or None}}}
            self.api.patch_node(name, patch, _request_timeout=self.timeout_s)
            changed.append(f"{CORDON_ANNOTATION}={value or '(removed)'}")
        if taint:
            taints = [t for t in (node.spec.taints or []) if t.key != TAINT_KEY]
            want = node_cordoned(devices)
            has = any(t.key == TAINT_KEY for t in (node.spec.taints or []))
            if want != has:
                kept = [{"key": t.key, "value": t.value, "effect": t.effect} for t in taints]
                if want:
                    kept.append({"key": TAINT_KEY, "value": "cordoned", "effect": "NoSchedule"})
                self.api.patch_node(name, {"spec": {"taints": kept}}, _request_timeout=self.timeout_s)
                changed.append(f"taint {TAINT_KEY}=cordoned:NoSchedule {'added' if want else 'removed'}")
        return changed

    def event(self, e: cpb.Event) -> None:
        """A Kubernetes Event for an anomaly raised on a node's device (named after the event's id,
        so that a retry does not repeat it).
        """
        m = self.models
        when = dt.datetime.fromtimestamp(e.timestamp_ns / 1e9, dt.UTC)
        body = m.CoreV1Event(
            metadata=m.V1ObjectMeta(name=f"{e.node_id}.xpuctl.{e.id or e.timestamp_ns:x}", namespace=EVENT_NAMESPACE),
            involved_object=m.V1ObjectReference(api_version="v1", kind="Node", name=e.node_id),
            reason=camel(e.detector or "anomaly"),
            message=f"{e.device_uuid}: {e.message}" if e.device_uuid else e.message,
            type="Warning" if e.severity in ("critical", "warning") else "Normal",
            source=m.V1EventSource(component="xpuctl"),
            reporting_component="xpuctl",
            reporting_instance=self.instance,
            first_timestamp=when,
            last_timestamp=when,
            count=1,
        )
        self.api.create_namespaced_event(EVENT_NAMESPACE, body, _request_timeout=self.timeout_s)


def _stamp(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value) if value else _now()


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """`xpuctl k8s ...`; returns its verbs (for the global flags)."""
    k = sub.add_parser("k8s", help="node conditions, events, cordon annotations and taints in Kubernetes")
    verbs: argparse._SubParsersAction = k.add_subparsers(dest="k8s_command", required=True)  # type: ignore[type-arg]
    sy = verbs.add_parser("sync", help="keep every node's XpuHealthy condition (and the rest) up to date")
    sy.add_argument("--kubeconfig", default=None, help="default: in-cluster, else ~/.kube/config")
    sy.add_argument("--taint", action="store_true", help=f"taint a cordoned node {TAINT_KEY}=cordoned:NoSchedule")
    sy.add_argument("--once", action="store_true", help="judge every node once and exit")
    sy.add_argument("--reconcile-s", type=float, default=60.0, help="every node again this often")
    sy.add_argument("--timeout-s", type=float, default=10.0, help="for each call to the controller and to Kubernetes")
    return verbs


def _say(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} xpuctl k8s: {text}", flush=True)


def run(args: argparse.Namespace, address: str, tls: Tls | None) -> int:
    """`xpuctl k8s sync`."""
    try:
        kube = Kube(args.kubeconfig, args.timeout_s)
    except RuntimeError as exc:
        print(f"xpuctl: k8s: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_sync(args, address, tls, kube))
    except KeyboardInterrupt:
        return 0


async def _round(xpu: AsyncClient, kube: Kube, which: set[str] | None, *, taint: bool) -> None:
    """Judge `which` nodes (None: every node) that both know, and write what changed."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        by_node = await follow.devices_by_node(xpu, which)
        nodes = await asyncio.to_thread(kube.nodes)
    except (ClientError, ApiException, OSError) as exc:
        _say(f"{exc}; nothing changed")
        return
    for name in sorted(set(by_node) & set(nodes)):
        try:
            changed = await asyncio.to_thread(kube.apply, nodes[name], by_node[name], taint=taint)
        except (ApiException, OSError) as exc:
            _say(f"{name}: {exc}")
            continue
        if changed:
            _say(f"{name}: {'; '.join(changed)}")


async def _sync(args: argparse.Namespace, address: str, tls: Tls | None, kube: Kube) -> int:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    async with AsyncClient(address, tls=tls, timeout_s=args.timeout_s) as xpu:
        if args.once:
            await _round(xpu, kube, None, taint=args.taint)
            return 0

        async def judge(which: set[str] | None) -> None:
            await _round(xpu, kube, which, taint=args.taint)

        async def on_event(e: cpb.Event) -> None:
            if e.kind == "anomaly.raised" and e.node_id:
                try:
                    await asyncio.to_thread(kube.event, e)
                except (ApiException, OSError) as exc:
                    _say(f"event for {e.node_id}: {exc}")

        try:
            await follow.run(xpu, judge, reconcile_s=args.reconcile_s, say=_say, on_event=on_event)
        except ClientError as exc:
            print(f"xpuctl: k8s sync: {exc}", file=sys.stderr)
            return 4
    return 0
