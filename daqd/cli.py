"""The ``daqd`` command line (click)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from daqd import __version__
from daqd.errors import UsageProblem

CONTEXT = {"auto_envvar_prefix": "DAQD", "help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="daqd")
def cli() -> None:
    """daqd: receive, buffer and record SPEAD streams."""


@cli.command()
@click.argument("source")
@click.option(
    "--max-heaps",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Partial heaps alive at once.",
)
@click.option(
    "--allow-out-of-order", is_flag=True, help="Accept the packets of a heap in any order."
)
@click.option(
    "--incomplete",
    is_flag=True,
    help="Print incomplete heaps too (received and length instead of items).",
)
@click.option(
    "--stop-on-stop-item/--no-stop-on-stop-item",
    default=True,
    show_default=True,
    help="End at a stream-control stop heap (else print it).",
)
@click.option("--max-packet-size", type=click.IntRange(min=8), default=9200, show_default=True)
@click.option(
    "--max-heap-size",
    type=click.IntRange(min=0),
    default=128 << 20,
    show_default=True,
    help="Larger heaps are rejected and counted.",
)
@click.option(
    "--count", type=click.IntRange(min=0), default=None, help="Stop after printing this many heaps."
)
def dump(
    source: str,
    max_heaps: int,
    allow_out_of_order: bool,
    incomplete: bool,
    stop_on_stop_item: bool,
    max_packet_size: int,
    max_heap_size: int,
    count: int | None,
) -> None:
    """Decode SOURCE and print one JSON line per heap; counters go to stderr.

    SOURCE is udp://HOST:PORT, tcp://HOST:PORT, pcap:PATH, file:PATH (file:- for
    stdin) or sim:W1 (W2, W3; ?heaps=N&rate=BPS).
    """
    from daqd.dump import run_dump
    from daqd.sources import open_source

    src = open_source(source, max_packet_size=max_packet_size)
    for warning in src.warnings:
        click.echo(f"daqd: warning: {warning}", err=True)
    run_dump(
        src,
        max_heaps=max_heaps,
        allow_out_of_order=allow_out_of_order,
        incomplete=incomplete,
        stop_on_stop_item=stop_on_stop_item,
        max_heap_size=max_heap_size,
        count=count,
        out=sys.stdout,
        err=sys.stderr,
    )


@cli.command()
@click.argument("target")
@click.option("--workload", type=click.Choice(["W1", "W2", "W3"]), default="W1", show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Bytes per second of whole packets; 0 sends as fast as possible.",
)
@click.option(
    "--heaps",
    type=click.IntRange(min=0),
    default=0,
    help="Heaps to send (0: until interrupted; required for files).",
)
@click.option(
    "--stop/--no-stop", default=True, show_default=True, help="End with a stream-control stop heap."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=7148,
    show_default=True,
    help="UDP destination port written into pcap frames.",
)
def simulate(target: str, workload: str, rate: float, heaps: int, stop: bool, port: int) -> None:
    """Send a reference workload to TARGET (udp://, tcp://, file:PATH, pcap:PATH)."""
    from daqd.simulate import simulate as run

    try:
        result = run(target, workload, rate=rate, heaps=heaps, stop=stop, port=port)
    except KeyboardInterrupt:
        return
    click.echo(json.dumps(result), err=True)


@cli.command()
@click.option(
    "--workload",
    "workloads",
    type=click.Choice(["W1", "W2", "W3"]),
    multiple=True,
    help="Reference workload (repeatable; default: all three).",
)
@click.option("--vs-spead2", is_flag=True, help="Run spead2 beside daqd and give the ratios.")
@click.option(
    "--mode",
    type=click.Choice(["memory", "udp", "all"]),
    default="all",
    show_default=True,
    help="From a buffer in memory, over loopback UDP, or both.",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed from-memory runs per receiver (median reported).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option(
    "--heaps",
    type=click.IntRange(min=1),
    default=None,
    help="Heaps per from-memory run (default: about 1 GiB of packets).",
)
@click.option(
    "--trial-seconds",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Traffic per UDP trial.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="UDP rate search: bisection trials after the halving ladder.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="UDP rate search: further trials at a rate before it counts as failed.",
)
@click.option(
    "--cost-trials",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="UDP: trials per receiver at one fixed rate for CPU time per packet (0: none).",
)
@click.option(
    "--socket-buffer",
    type=click.IntRange(min=4096),
    default=8 << 20,
    show_default=True,
    help="UDP receive buffer of both receivers (past net.core.rmem_max when permitted).",
)
@click.option(
    "--wait-idle",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Before each measurement, wait up to this many seconds for other processes "
    "to leave the CPUs idle (shared machines).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def bench(
    workloads: tuple[str, ...],
    vs_spead2: bool,
    mode: str,
    runs: int,
    as_json: bool,
    heaps: int | None,
    trial_seconds: float,
    steps: int,
    retries: int,
    cost_trials: int,
    socket_buffer: int,
    wait_idle: float,
    quiet: bool,
) -> None:
    """Run the chunk-mode throughput benchmarks and print figures (and ratios).

    memory: one pre-built buffer of the workload through daqd's chunk path
    (and spead2's ChunkRingStream), medians of interleaved runs.  udp: the
    highest rate each receiver sustains over loopback with < 0.1 % heap loss.
    """
    from daqd.bench import format_report, run_bench

    def log(line: str) -> None:
        if not quiet:
            click.echo(f"daqd bench: {line}", err=True)

    report = run_bench(
        workloads or ("W1", "W2", "W3"),
        vs_spead2=vs_spead2,
        mode=mode,
        runs=runs,
        heaps=heaps,
        trial_seconds=trial_seconds,
        steps=steps,
        retries=retries,
        cost_trials=cost_trials,
        socket_buffer=socket_buffer,
        wait_idle=wait_idle,
        log=log,
    )
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(format_report(report))


def main(argv: list[str] | None = None) -> Any:
    """Entry point: click without its multi-line usage errors.

    A bad argument, option or URI prints one line and exits with status 2.
    """
    try:
        return cli.main(args=argv, prog_name="daqd", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"daqd: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except UsageProblem as exc:
        click.echo(f"daqd: error: {exc}", err=True)
        sys.exit(2)
