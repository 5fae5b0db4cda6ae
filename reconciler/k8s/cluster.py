"""The live cluster, through the ``kubernetes`` client: list, watch, status patch.

Why this exists: the importer's only side effects on a cluster live here, thin
(the mapping is ``importer``, the loop ``sync``).  Objects travel as the API
server's JSON (``_preload_content=False``), which is what the importer reads
and what ``kubectl get -o yaml`` writes, so the live and the file paths share
every line of the mapping.  Watches are read as JSON lines from the raw
response; an ``ERROR`` event with code 410 is ``Gone`` (the caller lists again).
Works with Debian's python3-kubernetes 22.6 and newer clients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import LbctlError
from reconciler.k8s.crd import GROUP, VERSION, plural
from reconciler.k8s.objects import K8sObject, Objects
from reconciler.model import KINDS

try:
    import kubernetes
except ImportError:  # pragma: no cover - depends on the installation
    kubernetes = None  # type: ignore[assignment]

REQUEST_TIMEOUT = (10.0, 60.0)  # connect, read: a watch without a byte for 60 s is dead
WATCH_SECONDS = 50  # the server ends each watch before the read timeout; watched again from its version


class Gone(Exception):
    """410: the resourceVersion is too old; list again."""


@dataclass(frozen=True)
class Resource:
    """One kind of object the importer lists and watches."""

    name: str  # "services", "endpointslices", "nodes", or "lbctl.dev/pools"
    category: str  # which field of ``Objects`` it fills
    kind: str
    api_version: str
    optional: bool = False  # a missing CRD (404) is no error

    def typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with its kind and apiVersion (API lists leave them out of their items)."""
        obj.setdefault("kind", self.kind)
        obj.setdefault("apiVersion", self.api_version)
        return obj


RESOURCES = (Resource("services", "services", "Service", "v1"),
             Resource("endpointslices", "endpoint_slices", "EndpointSlice", "discovery.k8s.io/v1"),
             Resource("nodes", "nodes", "Node", "v1")) + tuple(
    Resource(f"{GROUP}/{plural(k)}", "lbctl", k, f"{GROUP}/{VERSION}", optional=True) for k in KINDS)


def _need() -> Any:
    if kubernetes is None:
        raise LbctlError("the kubernetes Python client is not installed",
                         hint="apt install python3-kubernetes (or pip install 'lbctl[k8s]'), or use -f FILES")
    return kubernetes


def connect(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ``ApiClient`` from ``kubeconfig`` ($KUBECONFIG, ~/.kube/config), else the in-cluster account."""
    k = _need()
    cfg = k.client.Configuration()
    default = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        if kubeconfig or any(os.path.exists(p) for p in default.split(os.pathsep)):
            # the client merges a $KUBECONFIG list of files itself (its own default is read at import)
            k.config.load_kube_config(config_file=kubeconfig or default, context=context,
                                      client_configuration=cfg)
        else:
            k.config.load_incluster_config(client_configuration=cfg)
    except (k.config.ConfigException, OSError, ValueError, TypeError) as exc:
        raise LbctlError(f"cannot configure the Kubernetes client: {exc}",
                         hint="pass --kubeconfig FILE, or run in a Pod with a service account") from None
    return k.client.ApiClient(cfg)


def _call(api: Any, resource: Resource, **kw: Any) -> Any:
    k = _need()
    kw.update(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
    if resource.name == "services":
        return k.client.CoreV1Api(api).list_service_for_all_namespaces(**kw)
    if resource.name == "nodes":
        return k.client.CoreV1Api(api).list_node(**kw)
    if resource.name == "endpointslices":
        return k.client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces(**kw)
    group, res = resource.name.split("/")
    return k.client.CustomObjectsApi(api).list_cluster_custom_object(group, VERSION, res, **kw)


def _api_error(resource: Resource, exc: Exception) -> LbctlError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or exc
    return LbctlError(f"listing {resource.name}: {status or ''} {reason}".replace("  ", " "),
                      hint="check the kubeconfig and that its user may list and watch Services, "
                           "EndpointSlices and Nodes")


def list_raw(api: Any, resource: Resource) -> tuple[list[K8sObject], str] | None:
    """(items, the list's resourceVersion); None for an optional resource the server lacks."""
    k = _need()
    try:
        resp = _call(api, resource)
        data = json.loads(resp.data)
    except k.client.ApiException as exc:
        if exc.status == 410:
            raise Gone() from None
        if resource.optional and exc.status == 404:
            return None
        raise _api_error(resource, exc) from None
    items: list[K8sObject] = [resource.typed(item) for item in data.get("items") or ()]
    return items, str((data.get("metadata") or {}).get("resourceVersion") or "")


def _lines(resp: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def watch(api: Any, resource: Resource, resource_version: str,
          started: Callable[[], None] = lambda: None) -> Iterator[Mapping[str, Any]]:
    """Events ({type, object}) after ``resource_version`` until the server ends the watch.

    Raises ``Gone`` on 410 (as an HTTP status or an ERROR event); a dropped
    connection raises whatever the HTTP library raises (the caller backs off).
    """
    k = _need()
    try:
        resp = _call(api, resource, watch=True, resource_version=resource_version,
                     allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS)
    except k.client.ApiException as exc:
        if exc.status == 410:
            raise Gone() from None
        raise _api_error(resource, exc) from None
    started()
    try:
        for line in _lines(resp):
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                if obj.get("code") == 410:
                    raise Gone()
                raise LbctlError(f"watching {resource.name}: {obj.get('code')} {obj.get('message')}",
                                 hint="lbctl lists again after a backoff")
            yield event
    finally:
        resp.release_conn()


@dataclass(frozen=True)
class Listing:
    objects: Objects
    versions: Mapping[str, str]


def list_all(api: Any) -> Listing:
    """Every resource once (the one-shot import)."""
    found: dict[str, list[K8sObject]] = {"services": [], "endpoint_slices": [], "nodes": [], "lbctl": []}
    versions = {}
    for res in RESOURCES:
        got = list_raw(api, res)
        if got is None:
            continue
        found[res.category].extend(got[0])
        versions[res.name] = got[1]
    return Listing(Objects(tuple(found["services"]), tuple(found["endpoint_slices"]), tuple(found["nodes"]),
                           tuple(found["lbctl"])), versions)


def patch_ingress(api: Any, namespace: str, name: str, ips: list[str]) -> None:
    """Set ``status.loadBalancer.ingress`` of one Service to ``ips`` (a JSON patch: 22.6 sends those)."""
    k = _need()
    body = [{"op": "add", "path": "/status/loadBalancer",
             "value": {"ingress": [{"ip": ip} for ip in ips]}}]
    try:
        k.client.CoreV1Api(api).patch_namespaced_service_status(
            name, namespace, body, _request_timeout=REQUEST_TIMEOUT, _preload_content=False)
    except k.client.ApiException as exc:
        raise LbctlError(f"writing the status of Service {namespace}/{name}: {exc.status} {exc.reason}",
                         hint="the importer's user needs patch on services/status") from None


def annotate_daemonset(api: Any, namespace: str, name: str, key: str, value: str) -> None:
    """Set one annotation of a DaemonSet (a JSON patch; the annotations map is made if missing)."""
    k = _need()
    apps = k.client.AppsV1Api(api)
    path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
    try:
        try:
            apps.patch_namespaced_daemon_set(name, namespace, [{"op": "add", "path": path, "value": value}],
                                             _request_timeout=REQUEST_TIMEOUT, _preload_content=False)
        except k.client.ApiException as exc:
            if exc.status != 422:  # 422: no annotations map yet to add to
                raise
            apps.patch_namespaced_daemon_set(
                name, namespace, [{"op": "add", "path": "/metadata/annotations", "value": {key: value}}],
                _request_timeout=REQUEST_TIMEOUT, _preload_content=False)
    except k.client.ApiException as exc:
        raise LbctlError(f"annotating DaemonSet {namespace}/{name}: {exc.status} {exc.reason}",
                         hint="the status publisher's user needs patch on that daemonset") from None
