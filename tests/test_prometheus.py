"""Reading our own /metrics pages: sums over label sets, absent is not zero."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from core.prometheus import read_metric, sample_total


def _page() -> str:
    registry = CollectorRegistry()
    dead = Counter("fraudstream_dead_letters", "x", ["kind"], registry=registry)
    dead.labels("invalid_json").inc(2)
    dead.labels("missing_field").inc(3)
    Gauge("fraudstream_assigned_partitions", "x", registry=registry).set(4)
    return generate_latest(registry).decode()


def test_sample_total_sums_label_sets_and_filters_by_label() -> None:
    page = _page()
    assert sample_total(page, "fraudstream_dead_letters_total") == 5
    assert sample_total(page, "fraudstream_dead_letters_total", kind="missing_field") == 3
    assert sample_total(page, "fraudstream_assigned_partitions") == 4
    assert sample_total(page, "fraudstream_consumed_total") is None


def test_read_metric_of_an_unreachable_page_is_none() -> None:
    from core.runtime.processes import free_port

    assert read_metric(f"http://127.0.0.1:{free_port()}/metrics", "anything", timeout=0.5) is None
