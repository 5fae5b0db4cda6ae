"""The shared errors: ConfigError formatting."""

from reconciler.errors import ConfigError


def test_full_format() -> None:
    e = ConfigError("a.yaml", 3, 5, "Service", "web", "spec.ports[0].port", "0 is out of range 1-65535",
                    "hint")
    assert str(e) == "a.yaml:3:5: Service/web: spec.ports[0].port: 0 is out of range 1-65535 (hint)"


def test_without_subject_path_or_position() -> None:
    assert str(ConfigError("a.yaml", 1, 2, None, None, "", "invalid YAML: x")) == \
        "a.yaml:1:2: invalid YAML: x"
    assert str(ConfigError("a.yaml", 0, 0, None, None, "", "symlink loop", "fix")) == \
        "a.yaml: symlink loop (fix)"
    assert str(ConfigError("a.yaml", 1, 1, None, "web", "kind", "m")) == "a.yaml:1:1: ?/web: kind: m"
