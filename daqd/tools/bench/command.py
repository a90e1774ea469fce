"""The ``daqd bench`` command: options, progress lines, the report printed."""

from __future__ import annotations

import json
from typing import Any

import click

from daqd.recv.workloads import WORKLOADS
from daqd.tools.bench.report import format_report
from daqd.tools.bench.run import LOOPBACKS, MODES, RAW_GROS, run_bench


@click.command("bench")
@click.option("--workload", "workloads", type=click.Choice(list(WORKLOADS)), multiple=True,
              help="Reference workload (repeatable; default: all three).")
@click.option("--vs-spead2", is_flag=True, help="Run spead2 beside daqd and give the ratios.")
@click.option("--mode", type=click.Choice(MODES), default="all",
              show_default=True, help="From a buffer in memory, over loopback UDP, or both.")
@click.option("--runs", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed from-memory runs per receiver (median reported).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option("--heaps", type=click.IntRange(min=1), default=None,
              help="Heaps per from-memory run (default: about 1 GiB of packets).")
@click.option("--trial-seconds", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Traffic per UDP trial.")
@click.option("--steps", type=click.IntRange(min=0), default=5, show_default=True,
              help="UDP rate search: bisection trials after the halving ladder.")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="UDP rate search: further trials at a rate before it counts as failed.")
@click.option("--cost-trials", type=click.IntRange(min=0), default=3, show_default=True,
              help="UDP: trials per receiver at one fixed rate for CPU time per packet "
              "(0: none).")
@click.option("--socket-buffer", type=click.IntRange(min=4096), default=64 << 20, show_default=True,
              help="UDP receive buffer of both receivers (past net.core.rmem_max when "
              "permitted).")
@click.option("--udp-runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="UDP rate searches per receiver and workload (median and spread reported).")
@click.option("--wait-idle", type=click.FloatRange(min=0), default=0.0,
              help="Before each measurement, wait up to this many seconds for other processes "
              "to leave the CPUs idle (shared machines).")
@click.option("--sender-gso/--no-sender-gso", default=True, show_default=True,
              help="UDP: the sender sends with UDP GSO (up to 64 KiB of datagrams per message; "
              "one datagram per message where the kernel refuses it).")
@click.option("--loopback", type=click.Choice(LOOPBACKS), default="auto",
              show_default=True,
              help="UDP: rps runs in a private network namespace whose loopback steers the "
              "kernel's receive work to the receiver's CPU (needs root); shared uses the "
              "machine's loopback, where the sender's CPU does that work; auto: rps where "
              "permitted.")
@click.option("--daqd-gro/--no-daqd-gro", default=True, show_default=True,
              help="UDP: daqd's socket asks for UDP GRO, as the daemon's does by default "
              "(--no-daqd-gro: the kernel's per-datagram path, as spead2 uses).")
@click.option("--limits/--no-limits", default=True, show_default=True,
              help="Also measure the machine's limits in the same rounds: from memory the "
              "copy limit (the payload copies alone), over UDP the raw receiver (recvmmsg on "
              "the same socket setup, counting datagrams only).")
@click.option("--raw-gro", type=click.Choice(list(RAW_GROS)), default="same", show_default=True,
              help="UDP: the raw receiver's socket with daqd's GRO setting, without GRO "
              "(daqd with GRO against the socket without it, in one run), or both.")
@click.option("--raw-copy", is_flag=True,
              help="UDP: also a raw receiver that copies each payload into chunk memory as "
              "daqd does (daqd's GRO setting): the socket limit with the copy, no SPEAD work.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def command(workloads: tuple[str, ...], as_json: bool, quiet: bool, **options: Any) -> None:
    """Run the chunk-mode throughput benchmarks and print figures (and ratios).

    memory: one pre-built buffer of the workload through daqd's chunk path
    (and spead2's ChunkRingStream), medians of interleaved runs, beside the
    copy limit (the payload copies alone).  udp: the highest rate each
    receiver sustains over loopback with < 0.1 % heap loss, medians of
    --udp-runs searches, beside the raw receiver (the socket limit).
    """
    def log(line: str) -> None:
        if not quiet:
            click.echo(f"daqd bench: {line}", err=True)

    report = run_bench(workloads or tuple(WORKLOADS), **options, log=log)
    click.echo(json.dumps(report.to_json()) if as_json else format_report(report))
