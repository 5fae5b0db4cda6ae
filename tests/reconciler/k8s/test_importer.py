"""``reconciler.k8s.importer``: recorded cluster objects -> lbctl files (golden), warnings, names.

Regenerate the golden files after an intended change with ``LBCTL_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config import load_dir
from reconciler.k8s import importer, manifests, outdir
from reconciler.k8s.annotations import KNOWN
from reconciler.k8s.objects import Objects

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "cluster.yaml"
GOLDEN = HERE / "golden"


def _convert() -> importer.Result:
    return importer.convert(manifests.read_files([str(FIXTURE)]))


def test_files_match_golden() -> None:
    result = _convert()
    got = {f.filename: f.data for f in result.files}
    if os.environ.get("LBCTL_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir()
        for name, data in got.items():
            (GOLDEN / name).write_bytes(data)
        (GOLDEN / "warnings.txt").write_text("".join(f"{w}\n" for w in result.warnings))
    want = {p.name: p.read_bytes() for p in GOLDEN.glob("*.yaml")}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs (LBCTL_UPDATE_GOLDEN=1 to accept)"
    warnings = "".join(f"{w}\n" for w in result.warnings)
    assert warnings == (GOLDEN / "warnings.txt").read_text()


def test_deterministic_whatever_the_order() -> None:
    objects = manifests.read_files([str(FIXTURE)])
    shuffled = Objects(tuple(reversed(objects.services)), tuple(reversed(objects.endpoint_slices)),
                                tuple(reversed(objects.nodes)))
    assert importer.convert(objects) == importer.convert(shuffled)


def test_output_validates_with_the_pools(tmp_path: Path) -> None:
    result = _convert()
    outdir.sync(tmp_path, [(f.filename, f.data) for f in result.files])
    shutil.copy(HERE / "fixtures" / "pools.yaml", tmp_path / "pools.yaml")
    loaded = load_dir(tmp_path)
    assert loaded.errors == ()
    assert len(loaded.of_kind("Service")) == len(result.files)


def test_selection_by_class_and_type() -> None:
    result = _convert()
    sources = {f.source for f in result.files}
    assert "Service other/nginx" not in sources  # another loadBalancerClass
    assert "Service default/kubernetes" not in sources  # ClusterIP
    assert result.skipped == 2
    other = importer.convert(manifests.read_files([str(FIXTURE)]),
                             importer.Options(lb_class="example.com/other"))
    assert [f.source for f in other.files] == ["Service other/nginx"]


def _file(result: importer.Result, name: str) -> str:
    return next(f.data.decode() for f in result.files if f.filename == name)


def test_ready_endpoints_and_traffic_policy() -> None:
    result = _convert()
    web = _file(result, "default-web.yaml")
    assert "10.0.0.11" in web and "10.0.0.12" in web  # Cluster: every ready node
    assert "10.0.0.13" not in web  # node-c is NotReady
    api = _file(result, "shop-api.yaml")
    assert "10.0.0.12" in api and "10.0.0.11" not in api  # Local: node-a's endpoint is not ready
    pods = _file(result, "annotated-http-probe.yaml")
    assert "10.244.2.32" not in pods and "10.244.2.31" in pods  # not-ready pod left out


def test_every_documented_annotation_is_known() -> None:
    documented = {"lbmode", "poolSelect", "poolSelectSecondary", "secondaryIPs", "staticIP", "liveness",
                  "probetype", "probeport", "probereq", "proberesp", "probetimeout", "proberetries",
                  "epselect", "timeout", "usepodnetwork", "ipam", "multus-nets"}
    assert documented <= KNOWN
    text = FIXTURE.read_text()
    for key in documented:
        assert f"loxilb.io/{key}:" in text, f"the fixture has no Service with loxilb.io/{key}"


@pytest.mark.parametrize("keys, expect", [
    ([("default", "web")], {("default", "web"): "default-web"}),
    ([("a-b", "c"), ("a", "b-c")], None),
    ([("ns", "x" * 63)], None),
])
def test_names_are_valid_and_unique(keys: list[tuple[str, str]], expect: dict[tuple[str, str], str] | None
                                    ) -> None:
    names = importer.resource_names(keys)
    if expect is not None:
        assert names == expect
    assert len(set(names.values())) == len(keys)
    for name in names.values():
        assert len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
    assert importer.resource_names(reversed(keys)) == names


def test_name_taken_by_an_lbctl_resource_gets_a_suffix() -> None:
    names = importer.resource_names([("default", "web")], taken={"default-web"})
    assert names[("default", "web")].startswith("default-web-")


def test_garbage_never_crashes() -> None:
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "x", "namespace": "n", "annotations": {
               "loxilb.io/probetype": "tcp", "loxilb.io/probetimeout": "1", "loxilb.io/proberesp": "y" * 2000,
               "loxilb.io/ipam": "ipv5", "loxilb.io/liveness": "maybe", "loxilb.io/secondaryIPs": "1.2.3.4"}},
           "spec": {"type": "LoadBalancer", "loadBalancerClass": importer.DEFAULT_CLASS,
                    "ports": [{"port": 1, "protocol": "TCP", "nodePort": 30001},
                              {"port": 2, "protocol": "ICMPX"}, "junk", {"port": "http"},
                              {"port": 3, "nodePort": "x"}],
                    "loadBalancerSourceRanges": ["nope"]}}
    result = importer.convert(Objects(services=(svc,)))
    assert len(result.files) == 1
    text = "\n".join(str(w) for w in result.warnings)
    for key in ("probetimeout", "proberesp", "ipam", "liveness", "secondaryIPs"):
        assert f"loxilb.io/{key}" in text
    assert "loadBalancerSourceRanges" in text and "ICMPX" in text and "'http'" in text
    assert "without a nodePort" in text


def test_lbctl_custom_resources_pass_through() -> None:
    pool = {"apiVersion": "lbctl.dev/v1alpha1", "kind": "Pool",
            "metadata": {"name": "default", "resourceVersion": "7", "uid": "u"},
            "spec": {"addresses": ["198.18.0.0/24"]}}
    bad = {"apiVersion": "lbctl.dev/v1alpha1", "kind": "Pool", "metadata": {"name": "bad"}, "spec": {}}
    result = importer.convert(Objects(lbctl=(pool, bad)))
    assert [f.filename for f in result.files] == ["lbctl-pool-default.yaml"]
    assert "uid" not in result.files[0].data.decode()
    assert any("Pool bad" in str(w) and "does not validate" in str(w) for w in result.warnings)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8)
                     | st.sampled_from(["yes", "fullnat", "10.0.0.1", "fd00::1", "IPv6", "Local", "80"]),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["port", "nodePort", "name", "protocol", "ready", "addresses",
                                          "conditions", "nodeName", "clientIP", "timeoutSeconds", "type"]),
                         inner, max_size=3), max_leaves=8)
_PATHS = [("metadata", "annotations"), ("metadata", "name"), ("metadata", "namespace"), ("spec", "ports"),
          ("spec", "ipFamilies"), ("spec", "loadBalancerSourceRanges"), ("spec", "sessionAffinityConfig"),
          ("spec", "externalTrafficPolicy"), ("spec", "loadBalancerIP"), ("spec",), ("metadata",)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 100), path=st.sampled_from(_PATHS), value=_JSON,
       annotation=st.sampled_from(sorted(KNOWN)), text=st.text(max_size=12))
def test_any_garbage_in_a_service_is_a_warning_never_a_crash(which: int, path: tuple[str, ...], value: object,
                                                               annotation: str, text: str) -> None:
    objects = manifests.read_files([str(FIXTURE)])
    services = [copy.deepcopy(dict(s)) for s in objects.services]
    svc = services[which % len(services)]
    svc["metadata"].setdefault("annotations", {})[f"loxilb.io/{annotation}"] = text
    target = svc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    slices = [copy.deepcopy(dict(s)) for s in objects.endpoint_slices]
    slices[which % len(slices)]["endpoints"] = value
    result = importer.convert(Objects(tuple(services), tuple(slices), objects.nodes))
    for f in result.files:  # whatever was written validates (convert checked it with the loader)
        assert f.data.startswith(importer.MARKER.encode())


def test_same_bytes_without_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    with_libyaml = _convert()
    monkeypatch.setattr(importer, "_DUMPER", yaml.SafeDumper)
    assert _convert() == with_libyaml
