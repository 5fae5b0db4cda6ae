"""A Kubernetes API server stand-in speaking list/watch from recorded responses (tests only).

Why this exists: no kube-apiserver can be built here (the Go module proxy is not
reachable), so the live path is tested against this HTTP server: real HTTP/1.1
with chunked watch streams as the API server sends them, driven by a script per
resource -- list responses in order, and per watch a list of events ending in
``"close"`` (the server ends the watch), ``"drop"`` (the connection dies in the
middle of a chunk) or ``"gone"`` (an ``ERROR`` event with code 410).  A watch
with no script left stays open until ``release()``.  Every request is logged.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

PATHS = {
    "/api/v1/services": "services",
    "/apis/discovery.k8s.io/v1/endpointslices": "endpointslices",
    "/api/v1/nodes": "nodes",
}
TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool, as the API server parses ?watch=


def _watching(query: dict[str, list[str]]) -> bool:
    return query.get("watch", [""])[0] in TRUE


LIST_KIND = {"services": ("ServiceList", "v1"),
             "endpointslices": ("EndpointSliceList", "discovery.k8s.io/v1"),
             "nodes": ("NodeList", "v1")}


def api_list(resource: str, items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    """A list response as the API server writes it (items without kind and apiVersion)."""
    if resource.startswith("lbctl.dev/"):  # custom resources keep kind and apiVersion in lists
        kind = f"{items[0]['kind']}List" if items else "List"
        return {"kind": kind, "apiVersion": "lbctl.dev/v1alpha1", "metadata": {"resourceVersion": rv},
                "items": items}
    kind, api = LIST_KIND[resource]
    bare = [{k: v for k, v in i.items() if k not in ("kind", "apiVersion")} for i in items]
    return {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": rv}, "items": bare}


def fixture_lists(path: Path, rv: str) -> dict[str, dict[str, Any]]:
    """The recorded ``kubectl get -o yaml`` fixture as the three list responses."""
    items = yaml.safe_load(path.read_text())["items"]
    by = {"Service": "services", "EndpointSlice": "endpointslices", "Node": "nodes"}
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in LIST_KIND}
    for item in items:
        out[by[item["kind"]]].append(item)
    return {r: api_list(r, v, rv) for r, v in out.items()}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-watch (a test ending, a dropped watch) is no error."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FakeApiServer:
    def __init__(self) -> None:
        self.lists: dict[str, deque[Any]] = defaultdict(deque)  # list bodies, or an HTTP status to fail with
        self.watches: dict[str, deque[list[Any]]] = defaultdict(deque)
        self.customs: dict[str, dict[str, Any]] = {}  # plural -> list response (lbctl.dev)
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.patches: list[tuple[str, Any, str]] = []
        self._released = threading.Event()
        self._lock = threading.Condition()
        self.last_list: dict[str, dict[str, Any]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                with outer._lock:
                    outer.requests.append(("GET", url.path, query))
                resource = PATHS.get(url.path)
                if resource is None and url.path.startswith("/apis/lbctl.dev/v1alpha1/"):
                    plural = url.path.rsplit("/", 1)[-1]
                    if plural not in outer.customs:
                        self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                        return
                    resource = f"lbctl.dev/{plural}"
                if resource is None:
                    self._json(404, {"kind": "Status", "code": 404})
                    return
                if _watching(query):
                    self._watch(resource)
                    return
                with outer._lock:
                    if resource.startswith("lbctl.dev/"):
                        body = outer.customs[resource.split("/")[1]]
                    else:
                        queue = outer.lists[resource]
                        body = queue.popleft() if len(queue) > 1 else queue[0]
                if isinstance(body, int):  # a scripted failure: that HTTP status
                    self._json(body, {"kind": "Status", "code": body, "reason": "InternalError"})
                    return
                self._json(200, body)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, resource: str) -> None:
                with outer._lock:
                    script = outer.watches[resource].popleft() if outer.watches[resource] else None
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                if script is None:
                    outer._released.wait(30)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                for step in script:
                    if step == "close":
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    if step == "drop":
                        self.wfile.write(b"40\r\n{\"type\": \"ADDED\", \"obj")  # half a chunk, then gone
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if step == "gone":
                        step = {"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                            "reason": "Expired", "message": "too old resource version"}}
                    self._chunk(json.dumps(step).encode() + b"\n")
                self.wfile.write(b"0\r\n\r\n")

            def do_PATCH(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with outer._lock:
                    outer.patches.append((self.path, body, self.headers.get("Content-Type", "")))
                    outer._lock.notify_all()
                self._json(200, {"kind": "Service", "apiVersion": "v1", "metadata": {}})

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        }))
        return path

    def watch_requests(self, path: str) -> list[str]:
        with self._lock:
            return [q.get("resourceVersion", [""])[0] for m, p, q in self.requests
                    if p == path and _watching(q)]

    def list_count(self, path: str) -> int:
        with self._lock:
            return sum(1 for m, p, q in self.requests if p == path and not _watching(q))

    def wait_for_patches(self, count: int, timeout: float = 30) -> list[tuple[str, Any, str]]:
        """The patches once there are ``count`` of them (the timeout is a safety net only)."""
        with self._lock:
            assert self._lock.wait_for(lambda: len(self.patches) >= count, timeout), self.patches
            return list(self.patches)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def release(self) -> None:
        self._released.set()

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
