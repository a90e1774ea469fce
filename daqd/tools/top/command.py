"""The ``daqd top`` command: endpoints from options or configurations, then the app."""

from __future__ import annotations

import time
from typing import Any

import click

from daqd.errors import UsageProblem
from daqd.service.client_keys import client_security, curve_options


def endpoints_of(endpoints: tuple[str, ...], configs: list[Any]) -> list[str]:
    """Return the statistics endpoints: `endpoints`, then each configuration's ``zmq.stats``.

    Raises
    ------
    UsageProblem
        When none is given, or a configuration has statistics off or on a
        wildcard port (which a client cannot connect to).
    """
    out = list(endpoints)
    for cfg in configs:
        if not cfg.zmq.stats:
            raise UsageProblem(f"{cfg.path}: zmq.stats is off; no statistics to watch")
        if cfg.zmq.stats.endswith(":*"):
            raise UsageProblem(f"{cfg.path}: zmq.stats = {cfg.zmq.stats!r} is a wildcard port; "
                               f"give the daemon's --endpoint (its ready log line names it)")
        out.append(cfg.zmq.stats)
    if not out:
        raise UsageProblem("give --endpoint E or --config F (one or more)")
    return list(dict.fromkeys(out))


@click.command("top")
@click.option("--endpoint", "endpoints", multiple=True, metavar="E",
              help="A daemon's statistics endpoint (zmq.stats); repeatable.")
@click.option("--config", "config_paths", multiple=True, metavar="F",
              type=click.Path(dir_okay=False),
              help="Take the statistics endpoint from this configuration; repeatable.")
@click.option("--stale-after", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds without a message (at least three of the daemon's intervals) "
                   "before a daemon is shown stale.")
@click.option("--print-after", type=click.FloatRange(min=0.1), default=None, metavar="S",
              help="No screen: listen for S seconds, print the table as text and exit "
                   "(for scripts and logs).")
@curve_options
def command(endpoints: tuple[str, ...], config_paths: tuple[str, ...],
            stale_after: float, print_after: float | None, curve_secret_key: str | None,
            curve_server_key: str | None) -> None:
    """Full-screen live monitor of one or many daemons.

    One row per daemon and stream, a totals row; keys: q quits, p pauses,
    s changes the sort, enter opens the selected stream's detail.
    """
    from daqd.config import load
    from daqd.tools.top.feed import Feed
    from daqd.tools.top.model import Monitor

    configs = [load(path, host=False) for path in config_paths]
    watched = endpoints_of(endpoints, configs)
    # CURVE: the options, else the first configuration's [zmq] client keys.
    security = client_security(configs[0] if configs else None, curve_secret_key,
                               curve_server_key)
    feed = Feed(watched, security)
    monitor = Monitor(watched, stale_after)
    if print_after is not None:
        click.echo("\n".join(_listen(feed, monitor, print_after)))
        return
    from daqd.tools.top.app import TopApp

    TopApp(feed, monitor).run()


def _listen(feed: Any, monitor: Any, seconds: float) -> list[str]:
    """Feed `monitor` for `seconds` (monotonic clock), then render its table."""
    from daqd.tools.top.cells import table_lines

    deadline = time.monotonic() + seconds
    try:
        while (now := time.monotonic()) < deadline:
            for endpoint, topic, message in feed.poll():
                monitor.ingest(endpoint, topic, message, now)
            time.sleep(min(0.05, max(0.0, deadline - now)))
    finally:
        feed.close()
    now = time.monotonic()
    lines = table_lines(monitor.view(now), monitor.totals(now))
    lines += [f"no statistics from {e}" for e in monitor.silent()]
    return lines
