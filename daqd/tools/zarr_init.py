"""``daqd zarr-init``: create the Zarr stores of a configuration's zarr sinks before any daemon.

The first daemon to write a store creates it; deployments that prefer to
create it beforehand (and check that every daemon's configuration fits it)
run this once, with any of the daemons' configuration files.  ``--records``
creates the time axis that long, so that on an object store no daemon needs
to grow it while the observation runs (see `daqd.sinks.zarr_store`).
"""

from __future__ import annotations

import click

from daqd.errors import UsageProblem


def zarr_init(config_path: str, stream: str | None = None, records: int = 0) -> list[str]:
    """Create (or check) the store of every zarr sink of `config_path`; one line each.

    Raises
    ------
    UsageProblem
        A bad configuration (an existing store of another layout is one), an
        unknown `stream`, no zarr sink, or a store that cannot be made.
    """
    from daqd.config import load
    from daqd.sinks.zarr_layout import ZarrLayout
    from daqd.sinks.zarr_store import group_attrs, open_or_create

    config = load(config_path)
    streams = [s for s in config.streams if stream is None or s.name == stream]
    if not streams:
        raise UsageProblem(f"--stream {stream!r}: no such stream in {config_path} (streams: "
                           + ", ".join(s.name for s in config.streams) + ")")
    lines = []
    for s in streams:
        for sink in s.sinks:
            if sink.kind != "zarr":
                continue
            assert s.chunk is not None
            timeline = s.timeline
            layout = ZarrLayout.from_config(sink, s.chunk, clock=timeline.has_utc)
            url = sink.path.format(stream=s.name)
            try:
                group, created = open_or_create(url, layout, group_attrs(s.name, layout,
                                                                         timeline), records)
            except OSError as exc:
                raise UsageProblem(f"{url}: cannot create the store: {exc}") from None
            extent = group["present"].shape[0]
            lines.append(f"{url}: {'created' if created else 'exists, layout matches'}; "
                         f"{extent} records along time, {layout.substreams_total} substreams")
    if not lines:
        raise UsageProblem(f"{config_path}: no zarr sink"
                           + (f" in stream {stream!r}" if stream else ""))
    return lines


@click.command("zarr-init")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="A configuration with zarr sinks (any of the daemons' that share a store).")
@click.option("--stream", default=None, help="Only this stream's stores (default: all).")
@click.option("--records", type=click.IntRange(min=0, max=1 << 40), default=0,
              help="Create the time axis this long (default: 1024; daemons grow it).")
def command(config_path: str, stream: str | None, records: int) -> None:
    """Create the Zarr stores of a configuration's zarr sinks, or check they fit it.

    A store that exists already is checked against the configuration's layout
    (and grown to --records); a mismatch is one line and status 2.
    """
    for line in zarr_init(config_path, stream, records):
        click.echo(line)
