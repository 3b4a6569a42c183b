"""Reading a service's Prometheus endpoint: the supervisor, the benchmarks and the tests use it.

Parsing is prometheus_client's own; this only adds "sum the samples of one metric".
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def sample_total(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples called `name` (e.g. `fraudstream_consumed_total`) whose labels match.

    None when no such sample exists, so "not exported" differs from "zero".
    """
    total: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + sample.value
    return total


def read_metric(url: str, name: str, *, timeout: float = 2.0, **labels: str) -> float | None:
    """`sample_total` of the page at `url` (ours, on loopback); None when unreachable or absent."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sample_total(text, name, **labels)
