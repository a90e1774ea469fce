"""Split callgrind instruction counts of the chunk-mode receive path into its parts.

Run (from the repository, after ``DAQD_CYTHON_ANNOTATE=1 python setup.py build_ext
--inplace``, which keeps ``cython_ext/spead.c``; the build has ``-g``)::

    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect=__pyx_gb_4daqd_6_spead_11ChunkStream_12generator2 \\
        --callgrind-out-file=cg.W2 python tests/benchmarks/hotpath_profile.py W2 --heaps 16384
    python tests/benchmarks/hotpath_callgrind.py cg.W2 --packets 16384

Only what runs inside ``ChunkStream.chunks()`` is counted (every ``process()``, the
chunks handed over, ``finish()``): not start-up, building the buffer, or making the
stream and its pool.  Divided by the packets it gives instructions per packet, split
by where gcc's debug information
puts each instruction (its line in ``spead.c``, the C function holding that line,
and the Cython source line above it).  With -O3 the window, decode and placement
code is inlined into one function per mode, so the split is by source line, not by
symbol: the parts are those of the README's "Where the time goes (profile)".
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

# Cython function (the part of the C function name after the module prefix) -> part.
PARTS: dict[str, str] = {
    "decode_packet": "decode",
    "decode_header_flavour": "decode",
    "decode_status_stat": "decode",
    "window_add_packet": "window lookup",
    "live_heap_accept": "window lookup",
    "window_next_slot": "window lookup",
    "window_heap_ready": "window lookup",
    "window_drop_heap": "window lookup",
    "window_release_storage": "window lookup",
    "window_unreserve": "window lookup",
    "window_flush": "window lookup",
    "place": "placement",
    "chunk_for": "placement",
    "scan_pointers": "item pointer scan",
    "scan_items": "item pointer scan",
    "ptr_value": "item pointer scan",
    "ptr_id": "item pointer scan",
    "ptr_is_immediate": "item pointer scan",
    "storage_reset": "window lookup",
    "on_packet": "placement",
    "_chunks_on_packet": "placement",
    "on_ready": "placement",
    "_chunks_on_ready": "placement",
    "writable": "placement",
    "keep_descriptor_packet": "placement",
    "window_add_batch": "batch bookkeeping",
    "window_receive": "batch bookkeeping",
    "receive": "batch bookkeeping",
    "_chunks_on_receive": "batch bookkeeping",
    "_chunks_on_batch": "batch bookkeeping",
    "set_parked": "batch bookkeeping",
    "sync_with_group": "batch bookkeeping",
    "merge_stats": "batch bookkeeping",
    "monotonic_ns": "batch bookkeeping",
    "bytes_take": "reader",
    "bytes_resync": "reader",
    "fill": "reader",
    "prefetch_payload": "prefetch (next payload)",
    "daqd_copy_stream_avx2": "copy",
    "daqd_copy_stream_sse2": "copy",
    "daqd_copy_payload": "copy",
    "daqd_copy_nontemporal": "copy",
    "daqd_copy_standard": "copy",
}
# Group-side functions: the chunk window, the rings, the hand-over to Python.
GROUP = re.compile(r"(extend|close_ready|close_chunk|win_|window_chunk|take_free|take_ready"
                   r"|reanchor|boundary|stream_ended|wake|note_blocked|wait_|evict|release"
                   r"|lowest_stream_head|sync_epoch|finish)")
C_FUNC = re.compile(r"^(?:static |CYTHON_INLINE |inline )*[A-Za-z_].*?\b(\w+)\((?!.*;\s*$)")
MARKER = re.compile(r'^\s*/\* "(cython_ext/[\w.]+)":(\d+)')
PYX_PREFIX = re.compile(r"^(?:__pyx_fuse_\d+)?__pyx_f_(?:4daqd_6_spead_|6packet_|5stats_)"
                        r"(?:\d+[A-Za-z]\w*?_)?")


def c_line_map(c_file: Path) -> tuple[list[str], list[tuple[str, int] | None]]:
    """For each line of the generated C: its C function and its Cython source line."""
    funcs: list[str] = []
    sources: list[tuple[str, int] | None] = []
    func = ""
    source: tuple[str, int] | None = None
    for line in c_file.read_text().splitlines():
        if line and not line[0].isspace() and line[0] != "#" and not line.startswith(("}", "/")):
            m = C_FUNC.match(line)
            if m and "=" not in line.split("(")[0]:
                func = m.group(1)
                source = None
        m = MARKER.match(line)
        if m:
            source = (m.group(1), int(m.group(2)))
        funcs.append(func)
        sources.append(source)
    return funcs, sources


def cython_name(c_func: str) -> str:
    """``__pyx_f_4daqd_6_spead_11ChunkStream_place`` -> ``place``; C helpers as they are."""
    if c_func.startswith(("daqd_", "load_", "store_")):
        return c_func
    m = PYX_PREFIX.match(c_func)
    if not m:
        return c_func
    rest = c_func[m.end():]
    rest = re.sub(r"^\d+\w*?(ChunkStream|ChunkGroup|ByteStreamReader|WindowStream)_", "", rest)
    return rest


def self_costs(path: Path) -> dict[tuple[str, str, str, int], int]:
    """Self Ir per (object, symbol, source file, line) of a callgrind file (positions: line)."""
    names: dict[str, dict[str, str]] = defaultdict(dict)

    def name(kind: str, value: str) -> str:
        m = re.match(r"\((\d+)\)(?: (.*))?", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), "?")

    costs: dict[tuple[str, str, str, int], int] = defaultdict(int)
    ob = fl = fn = fi = ""
    line_no = 0
    skip_next = False
    for raw in path.read_text().splitlines():
        if not raw or raw[0] == "#":
            continue
        c = raw[0]
        if c.isdigit() or c in "+-*":
            pos, _, rest = raw.partition(" ")
            if pos == "*":
                pass
            elif pos[0] in "+-":
                line_no += int(pos)
            else:
                line_no = int(pos)
            if skip_next:
                skip_next = False
                continue
            costs[(ob, fn, fi, line_no)] += int(rest.split()[0]) if rest else 0
            continue
        key, _, value = raw.partition("=")
        if key == "ob":
            ob = name("ob", value)
        elif key == "fl":
            fl = fi = name("fl", value)
        elif key in ("fi", "fe"):
            fi = name("fl", value)
        elif key == "fn":
            fn = name("fn", value)
            fi = fl
        elif key in ("cob",):
            name("ob", value)
        elif key in ("cfi", "cfl"):
            name("fl", value)
        elif key == "cfn":
            name("fn", value)
        elif key == "calls":
            skip_next = True
    return costs


def split(costs: dict[tuple[str, str, str, int], int], c_file: Path,
          ) -> dict[str, int]:
    """Sum self costs into the parts of the receive path."""
    funcs, sources = c_line_map(c_file)
    pxi_lines: dict[str, list[str]] = {}
    parts: dict[str, int] = defaultdict(int)
    for (ob, fn, fi, line), ir in costs.items():
        if "_spead." not in ob:
            if "libpython" in ob or ob.endswith("python") or "python3" in ob:
                parts["python (interpreter)"] += ir
            elif "libc" in ob and ("memcpy" in fn or "memmove" in fn):
                parts["copy"] += ir
            elif "libc" in ob and "pthread" in fn or "mutex" in fn:
                parts["batch bookkeeping"] += ir
            elif "numpy" in ob or "multiarray" in ob:
                parts["python (numpy)"] += ir
            else:
                parts["other: " + Path(ob).name] += ir
            continue
        if fi.endswith(("daqd_copy.h", "intrin.h")) or fn.startswith("daqd_copy"):
            parts["copy"] += ir
            continue
        if fi.endswith(("object.h", "abstract.h")):
            parts["python (Cython wrappers)"] += ir
            continue
        if fi.endswith("daqd_endian.h"):
            parts["decode"] += ir
            continue
        if not fi.endswith("spead.c") or not 0 < line <= len(funcs):
            parts["other (_spead)"] += ir
            continue
        func = cython_name(funcs[line - 1])
        source = sources[line - 1]
        if func.startswith(("__Pyx", "__pyx_p", "__pyx_tp", "__pyx_gb", "receive_result",
                            "_stats_dict")):
            parts["python (Cython wrappers)"] += ir
            continue
        part = PARTS.get(func)
        if part is None and GROUP.search(func):
            part = "chunk hand-over (group)"
        if part == "decode" and "fill" in fn:
            part = "reader"
        if part == "decode" and "bytes_take" in fn:
            part = "reader"
        if source is not None and part not in (None, "copy"):
            text = pxi_lines.setdefault(source[0], Path(source[0]).read_text().splitlines())
            if "stats[" in text[source[1] - 1]:
                part = "stats updates"
        parts[part or f"other: {func}"] += ir
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="callgrind output file")
    parser.add_argument("--packets", type=float, required=True,
                        help="packets the profiled run processed")
    parser.add_argument("--c-file", type=Path, default=Path("cython_ext/spead.c"))
    args = parser.parse_args(argv)
    a: dict[str, int] = {}
    b = split(self_costs(args.profile), args.c_file)
    total = 0.0
    rows = []
    for part in sorted(set(a) | set(b)):
        per_packet = (b.get(part, 0) - a.get(part, 0)) / args.packets
        total += per_packet
        rows.append((per_packet, part))
    for per_packet, part in sorted(rows, reverse=True):
        if abs(per_packet) >= 0.05:
            print(f"{per_packet:10.1f}  {part}")
    print(f"{total:10.1f}  total instructions per packet")


if __name__ == "__main__":
    main()
