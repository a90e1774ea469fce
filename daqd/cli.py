"""The ``daqd`` command line (click)."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from daqd import __version__, logs
from daqd.errors import UsageProblem
from daqd.service.client_keys import client_security, curve_options

CONTEXT = {"auto_envvar_prefix": "DAQD", "help_option_names": ["-h", "--help"]}


class Commands(click.Group):
    """The daemon's commands, and the tools' (``daqd/tools/``) loaded only when asked for.

    So ``daqd run`` imports no tool code, benchmarks least of all; each tool
    module defines its own ``command``, with the choices it owns.
    """

    TOOLS = {"dump": "daqd.tools.dump", "simulate": "daqd.tools.simulate",
             "bench": "daqd.tools.bench.command", "keygen": "daqd.tools.keygen",
             "top": "daqd.tools.top.command",
             "plot": "daqd.tools.plot", "zarr-init": "daqd.tools.zarr_init"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Name every command, the tools' too."""
        return sorted([*super().list_commands(ctx), *self.TOOLS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Return command `name`, importing a tool's module only now."""
        if name in self.TOOLS:
            command: click.Command = importlib.import_module(self.TOOLS[name]).command
            return command
        return super().get_command(ctx, name)


# no_args_is_help=False: ``daqd`` alone is a usage error ("Missing command.", one line,
# status 2), not click's whole help as an error message (click >= 8.2) or as success (8.1).
@click.group(cls=Commands, context_settings=CONTEXT, no_args_is_help=False)
@click.version_option(__version__, prog_name="daqd")
def cli() -> None:
    """daqd: receive, buffer and record SPEAD streams."""


# ----------------------------------------------------------------------
# the daemon

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Configuration file (default: the built-in one, config/daqd.toml in the "
         "source tree, shipped in the package).")
# The control endpoint of a client command (status, trigger, capture).
ENDPOINT_OPTION = click.option(
    "--endpoint", default=None,
    help="Control endpoint to ask (default: the configuration's zmq.control).")


def _load(config_path: str | None, host: bool = True) -> Any:
    """Load a configuration (`host`: check the machine too, to start a daemon).

    Clients of a running daemon leave out the writable directories and the
    memory budget: the daemon holds that memory itself.
    """
    from daqd.config import load

    return load(config_path, host=host)


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
    with PidFile(cfg.daemon.pidfile) as pidfile:
        status = daemon.run(cfg, duration, pidfile)
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
@click.option("--endpoint", default=None,
              help="Ask this control endpoint to stop, rather than signal the pidfile's pid.")
@curve_options
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Seconds to wait for the drain.")
def stop(config_path: str | None, endpoint: str | None, curve_secret_key: str | None,
         curve_server_key: str | None, timeout: float) -> None:
    """Stop the background daemon: SIGTERM, then wait until it has drained and exited.

    With --endpoint or CURVE keys (options or zmq.curve_client_secret_key),
    a ``stop`` request to the control socket instead, then wait until it
    stops answering (a daemon on another host).
    """
    from daqd.service import background
    cfg = _load(config_path, host=False) if config_path or not endpoint else None
    security = client_security(cfg, curve_secret_key, curve_server_key)
    if endpoint or security is not None:
        _stop_by_request(_control_endpoint(cfg, endpoint), security, timeout)
        return
    assert cfg is not None              # loaded whenever there is no --endpoint
    try:
        pid = background.stop(cfg, timeout)
    except background.DaemonFailed as exc:
        click.echo(f"daqd: error: {exc}", err=True)
        sys.exit(1)
    if pid is None:
        click.echo(f"daqd: not running (no live daemon holds {cfg.daemon.pidfile})", err=True)
    else:
        click.echo(f"daqd: stopped, pid {pid}", err=True)


def _control_endpoint(cfg: Any, endpoint: str | None) -> str:
    """``--endpoint``, else the configuration's ``zmq.control``."""
    if endpoint:
        return endpoint
    if not cfg.zmq.control:
        raise UsageProblem(f"{cfg.path}: zmq.control is off; no control socket to ask")
    return str(cfg.zmq.control)


def _stop_by_request(endpoint: str, security: Any, timeout: float) -> None:
    """``stop`` to the control socket; wait until the socket stops answering (drained)."""
    import time

    from daqd.service.zmq_clients import DaemonUnreachable, request

    reply = request(endpoint, "stop", security=security)
    if not reply.get("ok", False):
        click.echo(f"daqd: error: {reply.get('error', 'stop refused')}", err=True)
        sys.exit(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request(endpoint, "status", timeout=0.5, security=security)
        except DaemonUnreachable:
            click.echo(f"daqd: stopped, {endpoint}", err=True)
            return
        time.sleep(0.1)
    click.echo(f"daqd: error: {endpoint} still answers {timeout:g} s after stop", err=True)
    sys.exit(1)


@cli.command()
@CONFIG_OPTION
@ENDPOINT_OPTION
@curve_options
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
def status(config_path: str | None, endpoint: str | None, curve_secret_key: str | None,
           curve_server_key: str | None, as_json: bool, timeout: float) -> None:
    """Ask the daemon's control socket: state, uptime, per-stream rates and counters."""
    from daqd.service.zmq_clients import format_status, request

    cfg = _load(config_path, host=False) if config_path or not endpoint else None
    security = client_security(cfg, curve_secret_key, curve_server_key)
    reply = request(_control_endpoint(cfg, endpoint), "status", timeout=timeout,
                    security=security)
    click.echo(json.dumps(reply) if as_json else format_status(reply))
    if not reply.get("ok", False):
        sys.exit(1)


@cli.command()
@CONFIG_OPTION
@ENDPOINT_OPTION
@curve_options
@click.option("--stream", default=None,
              help="The stream (default: every stream with [stream.trigger]).")
@click.option("--start", default=None, metavar="T",
              help="Window start: ticks, or UTC (ISO 8601, or @UNIX_SECONDS) with [stream.time].")
@click.option("--end", default=None, metavar="T", help="Window end (excluded), as --start.")
@click.option("--pre", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Seconds of data time before the newest data.")
@click.option("--post", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Seconds of data time after the newest data.")
@click.option("--label", default=None, help="The event's label (in its file name).")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
def trigger(config_path: str | None, endpoint: str | None, curve_secret_key: str | None,
            curve_server_key: str | None, stream: str | None, start: str | None,
            end: str | None, pre: float | None, post: float | None, label: str | None,
            as_json: bool, timeout: float) -> None:
    """Write a window of data time to an event file of its own (per stream).

    The window is --start and --end, or --pre and --post seconds around the
    newest data time.  Prints each stream's event number and file name; the
    file is written while the command returns.
    """
    from daqd.service.zmq_clients import format_trigger, request

    if (start is None) != (end is None) or (pre is None) != (post is None) \
            or (start is None) == (pre is None):
        raise click.UsageError("give --start and --end, or --pre and --post")
    args: dict[str, Any] = {k: v for k, v in (("stream", stream), ("start", start),
                                              ("end", end), ("pre", pre), ("post", post),
                                              ("label", label)) if v is not None}
    cfg = _load(config_path, host=False) if config_path or not endpoint else None
    security = client_security(cfg, curve_secret_key, curve_server_key)
    reply = request(_control_endpoint(cfg, endpoint), "trigger", args, timeout=timeout,
                    security=security)
    _answered(reply, "trigger", as_json)
    if not as_json:
        click.echo(format_trigger(reply))


def _answered(reply: dict[str, Any], command: str, as_json: bool) -> None:
    """Print a request's reply as JSON if asked; a refusal is one line and status 2.

    The daemon refuses a request whose arguments (a person's) it cannot use,
    so a refusal is a usage problem, as a bad option is.
    """
    if as_json:
        click.echo(json.dumps(reply))
    if not reply.get("ok", False):
        error = str(reply.get("error", f"{command} refused"))
        prefix = f"{command}: "
        raise UsageProblem(error if error.startswith(prefix) else prefix + error)


#: Seconds ``daqd stats`` with CURVE keys waits for a first message (a wrong key: silence).
CURVE_FIRST_TIMEOUT = 10.0


@cli.command()
@click.option("--endpoint", "endpoints", multiple=True,
              help="Statistics endpoint (repeatable; default: the configuration's zmq.stats).")
@click.option("--config", "config_paths", type=click.Path(dir_okay=False), multiple=True,
              help="Configuration file whose zmq.stats to subscribe to (repeatable; default: "
                   "the built-in one, when no --endpoint is given).")
@curve_options
@click.option("--merge", is_flag=True,
              help="Print the totals of each stream name across the daemons (counters and "
                   "rates added) instead of each daemon's messages.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many messages.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Give up when no message comes for this many seconds (with CURVE keys, "
                   f"the first message: {CURVE_FIRST_TIMEOUT:g} s unless given).")
def stats(endpoints: tuple[str, ...], config_paths: tuple[str, ...],
          curve_secret_key: str | None, curve_server_key: str | None, merge: bool,
          as_json: bool, count: int | None, timeout: float | None) -> None:
    """Subscribe to one or more daemons' statistics and print them as they come."""
    from daqd.service.stats_totals import Totals
    from daqd.service.zmq_clients import format_stats_table, subscribe

    configs = [_load(path, host=False) for path in config_paths]
    if not endpoints and not configs:
        configs = [_load(None, host=False)]
    for cfg in configs:
        if not cfg.zmq.stats:
            raise UsageProblem(f"{cfg.path}: zmq.stats is off; give --endpoint")
    endpoints = (*endpoints, *(cfg.zmq.stats for cfg in configs))
    security = client_security(configs[0] if configs else None, curve_secret_key,
                                curve_server_key)
    totals = Totals() if merge else None
    shown = 0
    try:
        for topic, message in subscribe(
                endpoints, timeout=timeout, security=security,
                topics=("stats.",) if merge else ("stats.", "status"),
                first_timeout=CURVE_FIRST_TIMEOUT if security is not None else None):
            if totals is not None:
                merged = totals.update(message)
                if merged is None:
                    continue
                topic, message = f"stats.{merged['stream']}", merged
            if as_json:
                click.echo(json.dumps({"topic": topic, **message}))
            else:
                click.echo(format_stats_table(message))
            shown += 1
            if count is not None and shown >= count:
                return
    except KeyboardInterrupt:
        return


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="Configuration file to check.")
def validate(config_path: str) -> None:
    """Check a configuration completely without starting anything."""
    from daqd.config import memory_summary

    cfg = _load(config_path)
    modes = ", ".join(_stream_summary(s) for s in cfg.streams)
    click.echo(f"{cfg.path}: valid: {modes}; memory {memory_summary(cfg)}")


def _stream_summary(s: Any) -> str:
    """Return one stream's part of ``validate``'s line.

    Its mode, sources, receive threads (``threads``, and ``affinity`` when set) and
    sinks, e.g. ``adc0 (chunk mode, 1 source(s) x 2 thread(s), affinity [0, 1], 1 sink(s))``.
    """
    affinity = f", affinity {list(s.affinity)}" if s.affinity else ""
    return (f"{s.name} ({'chunk' if s.chunk else 'heap'} mode, "
            f"{len(s.sources)} source(s) x {s.threads} thread(s){affinity}, "
            f"{len(s.sinks)} sink(s))")



# ----------------------------------------------------------------------
# capture blocks (daqd.pipeline.capture): the control requests capture-start/-stop

def _capture_options(command: Any) -> Any:
    """Add the options of ``daqd capture start`` and ``stop``: where, which stream, when."""
    for option in reversed((
            CONFIG_OPTION,
            ENDPOINT_OPTION,
            curve_options,
            click.option("--stream", default=None,
                         help="The stream (default: every stream of the daemon)."),
            click.option("--at", default=None, metavar="T",
                         help="Data time: ticks (an integer), or UTC with the stream's "
                              "[stream.time] clock (ISO 8601, or @UNIX_SECONDS); default now."),
            click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON."),
            click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0,
                         show_default=True))):
        command = option(command)
    return command


@cli.group(no_args_is_help=False)
def capture() -> None:
    """Capture blocks: start or stop writing at a data timestamp.

    A block [start, stop) writes exactly the records whose data time overlaps
    it (with chunk-boundary ticks, exactly the chunks between them).
    """


@capture.command("start")
@_capture_options
@click.option("--id", "block_id", default=None,
              help="The capture-block id (letters, digits, '.', '_', '-'; default: the "
                   "start's UTC Unix seconds, see the README).")
def capture_start(block_id: str | None, **options: Any) -> None:
    """Start a capture block at --at (default: now)."""
    from daqd.pipeline.capture import check_id

    if block_id is not None:
        _option_problem("--id", check_id, block_id)
    _capture("capture-start", {"id": block_id}, **options)


@capture.command("stop")
@_capture_options
def capture_stop(**options: Any) -> None:
    """Stop the capture block at --at (default: now); receiving goes on."""
    _capture("capture-stop", {}, **options)


def _option_problem(name: str, check: Any, value: Any) -> Any:
    """Run `check(value)`; a refusal names the option (one line, exit status 2)."""
    try:
        return check(value)
    except UsageProblem as exc:
        message = str(exc).split(": ", 1)[-1]
        raise click.BadParameter(message, param_hint=name) from None


def _capture(command: str, args: dict[str, Any], config_path: str | None,
             endpoint: str | None, curve_secret_key: str | None, curve_server_key: str | None,
             stream: str | None, at: str | None, as_json: bool, timeout: float) -> None:
    """Send ``capture-start``/``capture-stop``; print each stream's block, or the refusal."""
    from daqd.pipeline.datatime import parse_instant
    from daqd.service.zmq_clients import format_capture, request

    if at is not None:
        _option_problem("--at", parse_instant, at)
    cfg = _load(config_path, host=False) if config_path or not endpoint else None
    security = client_security(cfg, curve_secret_key, curve_server_key)
    args = {**args, "stream": stream, "at": at}
    reply = request(_control_endpoint(cfg, endpoint), command,
                    {k: v for k, v in args.items() if v is not None}, timeout=timeout,
                    security=security)
    _answered(reply, command, as_json)
    if not as_json:
        for name, block in (reply.get("capture") or {}).items():
            click.echo(f"{name}: {format_capture(block)}")


@cli.command("start-receiving")
@CONFIG_OPTION
@click.option("--endpoint", default=None,
              help="Control endpoint to ask (default: the configuration's zmq.control).")
@curve_options
@click.option("--stream", default=None, help="The stream (default: every stream of the daemon).")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
def start_receiving(config_path: str | None, endpoint: str | None,
                    curve_secret_key: str | None, curve_server_key: str | None,
                    stream: str | None, as_json: bool, timeout: float) -> None:
    """Let streams with explicit_start take packets (spead2's stream.start())."""
    from daqd.service.zmq_clients import request

    cfg = _load(config_path, host=False) if config_path or not endpoint else None
    security = client_security(cfg, curve_secret_key, curve_server_key)
    reply = request(_control_endpoint(cfg, endpoint), "start-receiving",
                    {"stream": stream} if stream is not None else {}, timeout=timeout,
                    security=security)
    if as_json:
        click.echo(json.dumps(reply))
    if not reply.get("ok", False):
        if not as_json:
            click.echo(f"daqd: error: {reply.get('error', 'start-receiving refused')}", err=True)
        sys.exit(1)
    if not as_json:
        for name, was_waiting in (reply.get("started") or {}).items():
            click.echo(f"{name}: {'started' if was_waiting else 'already receiving'}")


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
        sys.exit(exc.exit_status)
