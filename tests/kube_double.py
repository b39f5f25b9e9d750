"""An HTTP test double of the Kubernetes API server, for `vft submit --to k8s`.

No API server can run here (no kind/k3s, no container engine), so this double stands in for one:
it answers the few endpoints the kubernetes client calls (create/replace/get of the chart's
kinds, pod listing and logs), records every request, and plays back a scripted RayJob or
RayService status, the way the KubeRay operator would move it along.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COLLECTIONS = {
    ("", "v1", "configmaps"): "ConfigMap",
    ("", "v1", "serviceaccounts"): "ServiceAccount",
    ("", "v1", "pods"): "Pod",
    ("networking.k8s.io", "v1", "networkpolicies"): "NetworkPolicy",
    ("policy", "v1", "poddisruptionbudgets"): "PodDisruptionBudget",
    ("monitoring.coreos.com", "v1", "podmonitors"): "PodMonitor",
    ("ray.io", "v1", "rayjobs"): "RayJob",
    ("ray.io", "v1", "rayservices"): "RayService",
}
PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>log|status))?$"
)


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class KubeDouble:
    """statuses: the `status` a GET of the RayJob/RayService returns, one per GET (the last repeats).
    existing: (kind, name) pairs that already exist, so a create of them answers 409."""

    statuses: list[dict] = field(default_factory=list)
    existing: set[tuple[str, str]] = field(default_factory=set)
    pod_log: str = ""
    requests: list[Request] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    gets: int = 0

    def created(self) -> list[dict]:
        return [r.body for r in self.requests if r.method in ("POST", "PUT", "PATCH") and r.body]

    def handle(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
        match = PATH.match(path)
        if not match:
            return 404, status_body(404, f"no route {path}")
        group = "" if match["core"] else match["group"]
        version = match["core"] or match["version"]
        kind = COLLECTIONS.get((group, version, match["plural"]))
        if kind is None:
            return 404, status_body(404, f"unknown resource {match['plural']}")
        ns, name = match["ns"], match["name"]
        if kind == "Pod":
            return self.pods(ns, name, match["sub"])
        if method == "POST":
            name = body["metadata"]["name"]
            if (kind, name) in self.existing:
                return 409, status_body(409, f'{match["plural"]} "{name}" already exists', "AlreadyExists")
            self.objects[(kind, ns, name)] = body
            return 201, body
        if method in ("PUT", "PATCH"):
            self.objects[(kind, ns, name)] = body
            return 200, body
        if method == "GET" and name:
            obj = self.objects.get((kind, ns, name))
            if obj is None:
                return 404, status_body(404, f'{match["plural"]} "{name}" not found', "NotFound")
            status = self.statuses[min(self.gets, len(self.statuses) - 1)] if self.statuses else {}
            self.gets += 1
            return 200, {**obj, "status": status}
        return 405, status_body(405, f"{method} {path} not supported by the test double")

    def pods(self, ns: str, name: str | None, sub: str | None) -> tuple[int, Any]:
        if name and sub == "log":
            return 200, self.pod_log
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "submitter-abcde", "namespace": ns},
            "status": {"phase": "Running"},
        }
        return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]}


def status_body(code: int, message: str, reason: str = "") -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    double: KubeDouble
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.lock:
            self.double.requests.append(
                Request(self.command, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            code, answer = self.double.handle(self.command, path, query, body)
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class KubeServer:
    """Runs a KubeDouble on 127.0.0.1 and writes a kubeconfig pointing at it."""

    TOKEN = "test-double-token"

    def __init__(self, double: KubeDouble, tmp: Path):
        handler = type("Handler", (_Handler,), {"double": double})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "double", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": self.TOKEN}}],
                    "contexts": [
                        {
                            "name": "double",
                            "context": {"cluster": "double", "user": "tester", "namespace": "ml"},
                        }
                    ],
                    "current-context": "double",
                }
            )
        )

    def __enter__(self) -> KubeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
