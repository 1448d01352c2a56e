"""Reading /metrics in tests: the Prometheus text parsed by prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["by_label", "metric", "samples"]


# The only label names a metric may carry: what is served and why, never who (tests check it).
ALLOWED_LABELS = frozenset(
    {
        "service", "reason", "status", "flag", "outcome", "issuer", "kind", "endpoint", "component", "model",
        "version", "role", "champion", "challenger", "agreement", "event", "variable", "operation", "le",
    }
)  # fmt: skip


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample: (name as exposed, e.g. cds_hook_calls_total; labels; value)."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0.0 when there are none)."""
    return sum(v for n, got, v in samples(text) if n == name and labels.items() <= got.items())


def by_label(text: str, name: str, label: str, **labels: str) -> dict[str, int]:
    """`name`'s samples matching `labels`, keyed by the value of `label`."""
    out: dict[str, int] = {}
    for n, got, v in samples(text):
        if n == name and label in got and labels.items() <= got.items():
            out[got[label]] = out.get(got[label], 0) + int(v)
    return out
