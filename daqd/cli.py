"""The ``daqd`` command line (click)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from daqd import __version__, logs
from daqd.errors import UsageProblem
from daqd.recv.workloads import WORKLOADS

CONTEXT = {"auto_envvar_prefix": "DAQD", "help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="daqd")
def cli() -> None:
    """daqd: receive, buffer and record SPEAD streams."""


INT = click.IntRange
FLOAT = click.FloatRange
WORKLOAD = click.Choice(list(WORKLOADS))


@cli.command()
@click.argument("source")
@click.option("--max-heaps", type=INT(min=1), default=4, show_default=True,
              help="Partial heaps alive at once.")
@click.option("--allow-out-of-order", is_flag=True,
              help="Accept the packets of a heap in any order.")
@click.option("--incomplete", is_flag=True,
              help="Print incomplete heaps too (received and length instead of items).")
@click.option("--stop-on-stop-item/--no-stop-on-stop-item", default=True, show_default=True,
              help="End at a stream-control stop heap (else print it).")
@click.option("--max-packet-size", type=INT(min=8), default=9200, show_default=True)
@click.option("--max-heap-size", type=INT(min=0), default=128 << 20, show_default=True,
              help="Larger heaps are rejected and counted.")
@click.option("--count", type=INT(min=0), default=None, help="Stop after printing this many heaps.")
def dump(source: str, max_heaps: int, allow_out_of_order: bool, incomplete: bool,
         stop_on_stop_item: bool, max_packet_size: int, max_heap_size: int,
         count: int | None) -> None:
    """Decode SOURCE and print one JSON line per heap; counters go to stderr.

    SOURCE is udp://HOST:PORT, tcp://HOST:PORT, pcap:PATH, file:PATH (file:- for
    stdin) or sim:W1 (W2, W3; ?heaps=N&rate=BPS).
    """
    from daqd.recv.sources import open_source
    from daqd.tools.dump import run_dump

    src = open_source(source, max_packet_size=max_packet_size)
    for warning in src.warnings:
        click.echo(f"daqd: warning: {warning}", err=True)
    run_dump(src, max_heaps=max_heaps, allow_out_of_order=allow_out_of_order,
             incomplete=incomplete, stop_on_stop_item=stop_on_stop_item,
             max_heap_size=max_heap_size, count=count, out=sys.stdout, err=sys.stderr)


@cli.command()
@click.argument("target")
@click.option("--workload", type=WORKLOAD, default="W1", show_default=True)
@click.option("--rate", type=FLOAT(min=0), default=0.0,
              help="Bytes per second of whole packets; 0 sends as fast as possible.")
@click.option("--heaps", type=INT(min=0), default=0,
              help="Heaps to send (0: until interrupted; required for files).")
@click.option("--stop/--no-stop", default=True, show_default=True,
              help="End with a stream-control stop heap.")
@click.option("--port", type=INT(0, 65535), default=7148, show_default=True,
              help="UDP destination port written into pcap frames.")
def simulate(target: str, workload: str, rate: float, heaps: int, stop: bool, port: int) -> None:
    """Send a reference workload to TARGET (udp://, tcp://, file:PATH, pcap:PATH)."""
    from daqd.tools.simulate import simulate as run

    try:
        result = run(target, workload, rate=rate, heaps=heaps, stop=stop, port=port)
    except KeyboardInterrupt:
        return
    click.echo(json.dumps(result), err=True)


@cli.command()
@click.option("--workload", "workloads", type=WORKLOAD, multiple=True,
              help="Reference workload (repeatable; default: all three).")
@click.option("--vs-spead2", is_flag=True, help="Run spead2 beside daqd and give the ratios.")
@click.option("--mode", type=click.Choice(["memory", "udp", "all"]), default="all",
              show_default=True, help="From a buffer in memory, over loopback UDP, or both.")
@click.option("--runs", type=INT(min=1), default=5, show_default=True,
              help="Timed from-memory runs per receiver (median reported).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option("--heaps", type=INT(min=1), default=None,
              help="Heaps per from-memory run (default: about 1 GiB of packets).")
@click.option("--trial-seconds", type=FLOAT(min=0.05), default=1.0, show_default=True,
              help="Traffic per UDP trial.")
@click.option("--steps", type=INT(min=0), default=5, show_default=True,
              help="UDP rate search: bisection trials after the halving ladder.")
@click.option("--retries", type=INT(min=0), default=1, show_default=True,
              help="UDP rate search: further trials at a rate before it counts as failed.")
@click.option("--cost-trials", type=INT(min=0), default=3, show_default=True,
              help="UDP: trials per receiver at one fixed rate for CPU time per packet "
              "(0: none).")
@click.option("--socket-buffer", type=INT(min=4096), default=64 << 20, show_default=True,
              help="UDP receive buffer of both receivers (past net.core.rmem_max when "
              "permitted).")
@click.option("--udp-runs", type=INT(min=1), default=3, show_default=True,
              help="UDP rate searches per receiver and workload (median and spread reported).")
@click.option("--wait-idle", type=FLOAT(min=0), default=0.0,
              help="Before each measurement, wait up to this many seconds for other processes "
              "to leave the CPUs idle (shared machines).")
@click.option("--sender-gso/--no-sender-gso", default=True, show_default=True,
              help="UDP: the sender sends with UDP GSO (up to 64 KiB of datagrams per message; "
              "one datagram per message where the kernel refuses it).")
@click.option("--loopback", type=click.Choice(["auto", "rps", "shared"]), default="auto",
              show_default=True,
              help="UDP: rps runs in a private network namespace whose loopback steers the "
              "kernel's receive work to the receiver's CPU (needs root); shared uses the "
              "machine's loopback, where the sender's CPU does that work; auto: rps where "
              "permitted.")
@click.option("--daqd-gro/--no-daqd-gro", default=True, show_default=True,
              help="UDP: daqd's socket asks for UDP GRO, as the daemon's does by default "
              "(--no-daqd-gro: the kernel's per-datagram path, as spead2 uses).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def bench(workloads: tuple[str, ...], as_json: bool, quiet: bool, **options: Any) -> None:
    """Run the chunk-mode throughput benchmarks and print figures (and ratios).

    memory: one pre-built buffer of the workload through daqd's chunk path
    (and spead2's ChunkRingStream), medians of interleaved runs.  udp: the
    highest rate each receiver sustains over loopback with < 0.1 % heap loss,
    medians of --udp-runs searches.
    """
    from daqd.tools.bench.report import format_report
    from daqd.tools.bench.run import run_bench

    def log(line: str) -> None:
        if not quiet:
            click.echo(f"daqd bench: {line}", err=True)

    report = run_bench(workloads or tuple(WORKLOADS), **options, log=log)
    click.echo(json.dumps(report.to_json()) if as_json else format_report(report))


# ----------------------------------------------------------------------
# the daemon

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Configuration file (default: the built-in config/daqd.toml).")


def _load(config_path: str | None) -> Any:
    from daqd.config import load

    return load(config_path)


@cli.command()
@CONFIG_OPTION
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Drain and exit after this many seconds.")
@click.option("--log-format", type=click.Choice(logs.FORMAT_CHOICES), default=None,
              help="Default: the configuration's, else JSON unless on a terminal.")
@click.option("--log-level", type=click.Choice(logs.LEVEL_CHOICES), default=None,
              help="Default: the configuration's log_level.")
def run(config_path: str | None, duration: float | None, log_format: str | None,
        log_level: str | None) -> None:
    """Run the daemon in the foreground.

    It runs until SIGTERM/SIGINT, a stop request, the end of every finite
    source, or --duration; then it drains and exits 0.
    """
    import faulthandler

    from daqd.logs import configure_logging
    from daqd.service import daemon
    from daqd.service.pidfile import PidFile

    cfg = _load(config_path)
    faulthandler.enable()               # a watchdog SIGABRT dumps every thread's stack
    fmt = log_format or cfg.daemon.log_format
    configure_logging(None if fmt == "auto" else fmt, log_level or cfg.daemon.log_level,
                      daemon=cfg.daemon.name)
    with PidFile(cfg.daemon.pidfile):
        status = daemon.run(cfg, duration)
    sys.exit(status)


@cli.command()
@CONFIG_OPTION
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Where the daemon's JSON log lines go (default: beside the pidfile).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the daemon to report ready.")
def start(config_path: str | None, log_file: str | None, timeout: float) -> None:
    """Start the daemon in the background (pidfile from the configuration)."""
    from pathlib import Path

    from daqd.service import background
    cfg = _load(config_path)
    path = Path(log_file) if log_file else background.default_log_file(cfg)
    try:
        pid = background.start(cfg, path, timeout)
    except background.DaemonFailed as exc:
        click.echo(f"daqd: error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"daqd: started, pid {pid}, log {path}", err=True)


@cli.command()
@CONFIG_OPTION
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Seconds to wait for the drain.")
def stop(config_path: str | None, timeout: float) -> None:
    """Stop the background daemon: SIGTERM, then wait until it has drained and exited."""
    from daqd.service import background
    cfg = _load(config_path)
    try:
        pid = background.stop(cfg, timeout)
    except background.DaemonFailed as exc:
        click.echo(f"daqd: error: {exc}", err=True)
        sys.exit(1)
    if pid is None:
        click.echo(f"daqd: not running (no live daemon holds {cfg.daemon.pidfile})", err=True)
    else:
        click.echo(f"daqd: stopped, pid {pid}", err=True)


@cli.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
def status(config_path: str | None, as_json: bool, timeout: float) -> None:
    """Ask the daemon's control socket: state, uptime, per-stream rates and counters."""
    from daqd.service.zmq_clients import format_status, request

    cfg = _load(config_path)
    if not cfg.zmq.control:
        raise UsageProblem(f"{cfg.path}: zmq.control is off; no control socket to ask")
    reply = request(cfg.zmq.control, "status", timeout=timeout)
    click.echo(json.dumps(reply) if as_json else format_status(reply))
    if not reply.get("ok", False):
        sys.exit(1)


@cli.command()
@click.option("--endpoint", "endpoints", multiple=True,
              help="Statistics endpoint (repeatable; default: the configuration's zmq.stats).")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many messages.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Give up when no message comes for this many seconds.")
def stats(endpoints: tuple[str, ...], config_path: str | None, as_json: bool,
          count: int | None, timeout: float | None) -> None:
    """Subscribe to one or more daemons' statistics and print them as they come."""
    from daqd.service.zmq_clients import format_stats_table, subscribe

    if not endpoints:
        cfg = _load(config_path)
        if not cfg.zmq.stats:
            raise UsageProblem(f"{cfg.path}: zmq.stats is off; give --endpoint")
        endpoints = (cfg.zmq.stats,)
    try:
        for topic, message in subscribe(endpoints, count=count, timeout=timeout):
            if as_json:
                click.echo(json.dumps({"topic": topic, **message}))
            else:
                click.echo(format_stats_table(message))
    except KeyboardInterrupt:
        return


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="Configuration file to check.")
def validate(config_path: str) -> None:
    """Check a configuration completely without starting anything."""
    cfg = _load(config_path)
    modes = ", ".join(f"{s.name} ({'chunk' if s.chunk else 'heap'} mode, "
                      f"{len(s.sources)} source(s), {len(s.sinks)} sink(s))"
                      for s in cfg.streams)
    click.echo(f"{cfg.path}: valid: {modes}")

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
