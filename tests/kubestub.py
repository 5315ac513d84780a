"""A stand-in for kube-apiserver, for the requests `xpuctl k8s sync` makes (none can be installed on
these machines: notes/scheduler-integration.md 2.6). It speaks the API's JSON on a free loopback
port, keeps nodes and events, applies the patches as the API server would for these fields
(conditions merged by type, annotations merged with null removing, taints replaced whole) and
records every request, so that a test can assert the exact ones the official client sent.
"""

from __future__ import annotations

import copy
import http.server
import json
import pathlib
import re
import threading
from typing import Any

from xpuctl.common.ports import free_port


class Request:
    """One request as the server got it."""

    def __init__(self, method: str, path: str, content_type: str, body: Any) -> None:  # noqa: ANN401 - JSON
        """Keep it."""
        self.method, self.path, self.content_type, self.body = method, path, content_type, body

    def __repr__(self) -> str:
        """For assertion messages."""
        return f"{self.method} {self.path} {self.content_type} {json.dumps(self.body)}"


class KubeStub:
    """Nodes and events behind /api/v1, on 127.0.0.1."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        """Serve these nodes (Node objects as JSON); no request yet."""
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.events: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.port = free_port()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, code: int, obj: object) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:  # noqa: ANN401 - JSON
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"null")

            def do_GET(self) -> None:
                with stub.lock:
                    stub.requests.append(Request("GET", self.path, "", None))
                    if self.path.split("?")[0] == "/api/v1/nodes":
                        self._reply(
                            200,
                            {
                                "kind": "NodeList",
                                "apiVersion": "v1",
                                "metadata": {},
                                "items": list(stub.nodes.values()),
                            },
                        )
                    else:
                        self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})

            def do_PATCH(self) -> None:
                body = self._body()
                with stub.lock:
                    stub.requests.append(Request("PATCH", self.path, self.headers.get("Content-Type", ""), body))
                    m = re.fullmatch(r"/api/v1/nodes/([^/?]+)(/status)?(\?.*)?", self.path)
                    if m is None or m.group(1) not in stub.nodes:
                        self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})
                        return
                    node = stub.nodes[m.group(1)]
                    stub.apply(node, body)
                    self._reply(200, node)

            def do_POST(self) -> None:
                body = self._body()
                with stub.lock:
                    stub.requests.append(Request("POST", self.path, self.headers.get("Content-Type", ""), body))
                    if re.fullmatch(r"/api/v1/namespaces/[^/]+/events(\?.*)?", self.path):
                        stub.events.append(body)
                        self._reply(201, body)
                    else:
                        self._reply(404, {"kind": "Status", "status": "Failure", "code": 404})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def apply(node: dict[str, Any], patch: dict[str, Any]) -> None:
        """The API server's merge, for the fields sync writes."""
        for c in patch.get("status", {}).get("conditions", []):
            conds = node.setdefault("status", {}).setdefault("conditions", [])
            conds[:] = [x for x in conds if x["type"] != c["type"]] + [c]
        notes = node.setdefault("metadata", {}).setdefault("annotations", {})
        for k, v in patch.get("metadata", {}).get("annotations", {}).items():
            if v is None:
                notes.pop(k, None)
            else:
                notes[k] = v
        if "taints" in patch.get("spec", {}):
            node.setdefault("spec", {})["taints"] = patch["spec"]["taints"]

    def start(self) -> KubeStub:
        """Serve in a thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def taken(self) -> list[Request]:
        """The requests so far (and forget them)."""
        with self.lock:
            out, self.requests = self.requests, []
            return out

    def node(self, name: str) -> dict[str, Any]:
        """A node as it is now."""
        with self.lock:
            return copy.deepcopy(self.nodes[name])

    def kubeconfig(self, folder: pathlib.Path) -> pathlib.Path:
        """A kubeconfig for this server (plain HTTP, no credentials)."""
        path = folder / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                    "users": [{"name": "me", "user": {}}],
                    "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me"}}],
                    "current-context": "stub",
                }
            )
        )
        return path


def node(
    name: str, *, taints: list[dict[str, str]] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Node object as the API returns it."""
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-{name}", "annotations": dict(annotations or {}), "labels": {}},
        "spec": {"taints": list(taints or [])},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}]},
    }
