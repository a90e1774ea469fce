"""A process the WAL tests kill: numbered records into a buffer with a write-ahead log.

    python wal_driver.py DIR TOTAL [--flush-count N] [--capacity C] [--fsync P]
                         [--max-bytes B] [--flaky-every K] [--sink file|binary]
                         [--rotate-bytes R]

It builds a fifo ``block`` buffer with a WAL (DIR/buffer.wal) and two sinks
"a" and "b", recovers, starts a Flusher (count policy), then puts
records numbered from where the log says up to TOTAL - 1.  It prints
``start N``, then each number on its own line once `put()` has returned True,
flushed, and after a clean stop ``stats {json}`` and ``done``.  A record refused by put() makes it
exit with status 3 (the tests do not expect any).

Sinks: ``--sink file`` (tests/buffer_sinks.FileSink: DIR/out-a.bin and
DIR/out-b.bin; "b" fails every K-th write after writing one record, and
rolls back) or ``--sink binary`` (daqd.sinks binary sinks, DIR/out-a-N.bin
..., a new file per run or every ``--rotate-bytes``; "b" fails every K-th
write).
"""

import argparse
import json
import sys
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from buffer_sinks import FileSink, numbered_record, recover_file

from daqd.config import BufferConfig
from daqd.pipeline.buffers import build_buffer
from daqd.pipeline.flush import Flusher


def binary_sinks(directory, flaky_every, rotate):
    """daqd's binary sinks (heap payloads; a new file every `rotate` bytes), "b" flaky."""
    from daqd.config import SinkConfig
    from daqd.sinks import SinkContext, make_sink

    class FlakyBinary:
        """Fails every `flaky_every`-th write before writing anything."""

        def __init__(self, sink):
            self.sink, self.calls = sink, 0

        def write(self, records):
            self.calls += 1
            if flaky_every and self.calls % flaky_every == 0:
                raise OSError(28, "No space left on device (test)")
            self.sink.write(records)

        def __getattr__(self, name):
            return getattr(self.sink, name)

    sinks = [make_sink(SinkContext("wal-test", SinkConfig(
        kind="binary", path=str(directory / f"out-{name}-{{seq}}.bin"), rotate_bytes=rotate)))
        for name in ("a", "b")]
    return [sinks[0], FlakyBinary(sinks[1])]


def recover_binary(sink, checkpoint):
    from daqd.sinks import recover_sink

    recover_sink(sink.context, checkpoint)


class FlakySink(FileSink):
    """Fails every `every`-th write after writing its first record (then rolls back)."""

    def __init__(self, path, name, every):
        super().__init__(path, name)
        self.every = every
        self.calls = 0

    def write(self, records):
        self.calls += 1
        self.fail_after = 1 if self.every and self.calls % self.every == 0 else None
        super().write(records)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("total", type=int)
    parser.add_argument("--flush-count", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=4096)
    parser.add_argument("--fsync", default="every-flush")
    parser.add_argument("--max-bytes", type=int, default=1 << 30)
    parser.add_argument("--flaky-every", type=int, default=5)
    parser.add_argument("--sink", choices=("file", "binary"), default="file")
    parser.add_argument("--rotate-bytes", type=int, default=0)
    args = parser.parse_args()
    # Logs go to stderr: stdout carries only the numbers the test reads.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.sink == "binary":
        sinks = binary_sinks(args.dir, args.flaky_every, args.rotate_bytes)
        recover = recover_binary
    else:
        sinks = [FileSink(args.dir / "out-a.bin", "a"),
                 FlakySink(args.dir / "out-b.bin", "b", args.flaky_every)]
        recover = recover_file
    config = BufferConfig(kind="fifo", capacity=args.capacity, when_full="block",
                          block_timeout=30.0, flush_count=args.flush_count, flush_interval=0,
                          wal=str(args.dir / "buffer.wal"), wal_fsync=args.fsync,
                          wal_max_bytes=args.max_bytes)
    buffer = build_buffer(config, sinks, recover)
    flusher = Flusher(buffer).start()
    out = sys.stdout
    out.write(f"start {buffer.next_seq}\n")
    out.flush()
    for n in range(buffer.next_seq, args.total):
        assert buffer.next_seq == n
        if not buffer.put(numbered_record(n)):
            out.write(f"refused {n} {buffer.stats()['dropped']}\n")
            return 3
        out.write(f"{n}\n")
        out.flush()
    if not flusher.stop(timeout=30):
        return 4
    out.write("stats " + json.dumps(buffer.stats()) + "\n")
    buffer.close()          # what "b" failed to write at the last flush stays logged
    for sink in sinks:
        sink.close()
    out.write("done\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
