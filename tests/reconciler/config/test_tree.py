"""Path syntax round-trips."""

from hypothesis import given
from hypothesis import strategies as st

from reconciler.config.tree import format_path, parse_path


def test_examples() -> None:
    assert format_path(["spec", "ports", 0, "port"]) == "spec.ports[0].port"
    assert format_path(["metadata", "labels", "app.kubernetes.io/name"]) == \
        'metadata.labels["app.kubernetes.io/name"]'


@given(st.lists(st.one_of(st.integers(min_value=0, max_value=999), st.text(min_size=1, max_size=12)),
                min_size=1, max_size=6).filter(lambda s: isinstance(s[0], str)))
def test_round_trip(segments: list[str | int]) -> None:
    assert parse_path(format_path(segments)) == segments
