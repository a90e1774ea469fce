"""The shipped Grafana dashboard against a real daemon's ``/metrics``: it cannot rot.

A daemon with a chunk-mode stream and a Prometheus endpoint is started, fed W1
over loopback UDP and scraped; the exposition is parsed with prometheus_client's
parser, and every metric a PromQL query of ``config/grafana/daqd.json`` names
(panels and template variables, found wherever an ``expr`` is in the JSON and
parsed with a PromQL parser, not by pattern) must be exposed, with the labels the
query selects and groups by.
"""

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_helpers import (
    REPO,
    DaemonProcess,
    chunk_stream_config,
    free_port,
    send_w1,
    sinks_toml,
    write_config,
)

DASHBOARD = REPO / "config" / "grafana" / "daqd.json"
WAIT = 20.0          # upper bound of every wait; never a speed requirement
HEAPS = 64
# Grafana's own interval variables, which PromQL cannot parse in a range.
GRAFANA_INTERVAL = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(node: Any) -> Iterator[str]:
    """Every PromQL query in the dashboard: each ``expr``, and each variable's query."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def variable_queries(dash: dict[str, Any]) -> Iterator[str]:
    """The PromQL inside ``label_values(EXPR, LABEL)`` of the query variables."""
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.match(text)
            assert match, f"variable {variable['name']}: not label_values(...): {text!r}"
            yield match["expr"]


def selectors(query: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels the query's selector and enclosing ``by`` use) per selector."""
    ast = promql_parser.parse(GRAFANA_INTERVAL.sub("1m", query))
    found: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            if node.modifier.type == promql_parser.AggModifierType.By:
                grouping.update(node.modifier.labels)
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {query!r}"
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(ast, visit)
    return [(name, labels | grouping) for name, labels in found]


def scrape(url: str) -> list[Any]:
    """The samples of one scrape, parsed with prometheus_client's parser."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples]


def test_the_dashboard_is_grafana_json_with_a_datasource_and_daemon_and_stream_variables():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"daemon", "stream"} <= set(variables)
    titles = [panel["title"] for panel in dash["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            for name, labels in selectors(target["expr"]):
                assert "daemon" in labels, (panel["title"], name)   # the daemon variable applies
    kinds = {panel["type"] for panel in dash["panels"]}
    assert "heatmap" in kinds


def test_every_metric_the_dashboard_queries_is_exposed_by_a_real_daemon(tmp_path: Path):
    dash = dashboard()
    used = [(query, name, labels)
            for query in [*queries(dash), *variable_queries(dash)]
            for name, labels in selectors(query)]
    assert len({name for _, name, _ in used}) >= 20          # the extraction found them

    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    # with the instrument's clock ([stream.time]), so data-time metrics are exposed too
    config = chunk_stream_config(tmp_path, port=port, sinks=sinks_toml(tmp_path, "hdf5"),
                                 extra='[stream.time]\nsync_time = "2026-12-07T00:00:00Z"\n'
                                       'timestamp_rate = 1712e6\n')
    config = config.replace("[daemon]\n", f'[daemon]\nprometheus = "127.0.0.1:{metrics_port}"\n',
                            1)
    daemon = DaemonProcess(write_config(tmp_path, config))
    try:
        daemon.ready()
        url = daemon.wait_event("serving Prometheus metrics")["url"]
        send_w1(port, HEAPS, stop=False)
        deadline = time.monotonic() + WAIT
        while True:                     # until the daemon has counted what was sent
            samples = scrape(url)
            packets = sum(s.value for s in samples if s.name == "daqd_packets_total")
            if packets >= HEAPS or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert packets == HEAPS
        assert daemon.stop() == 0
    finally:
        daemon.close()

    exposed: dict[str, set[str]] = {}
    for sample in samples:
        exposed.setdefault(sample.name, set()).update(sample.labels)
    missing = sorted({name for _, name, _ in used if name not in exposed})
    assert not missing, f"the dashboard queries metrics the daemon does not expose: {missing}"
    for query, name, labels in used:
        assert labels <= exposed[name], (f"{name} lacks labels {labels - exposed[name]} "
                                         f"used in {query!r}")
