"""Chunk stream groups under threads: several streams, small pools, waits, a recycling consumer.

Each case (one seed) builds a group (2-4 streams, lossy or lossless, max_chunks 1-4,
a pool of max_chunks .. max_chunks + 3, when_full "wait" mostly, sometimes with a wait
timeout short enough to expire), feeds each stream from its own thread in random
batches with random pauses (idle streams, jumps ahead, lost heaps, heaps of one to
three packets; waits that spin before they sleep, or not), and a consumer thread takes
every chunk (woken per chunk or per batch), checks it and gives it back, sometimes late
and sometimes holding a second one.  Checked:

- every chunk is delivered once, in order of chunk id, and the group ends;
- every present slot holds the payload of the heap at that position (so no stream
  wrote into a chunk after it was handed over or recycled), missing slots are zeros;
- presence and counters agree: heaps present == chunk_heaps_present, and every heap
  sent is present, too old or without a free chunk; lossless without timeouts:
  every heap present from the chunk of the first heap the group saw on;
- the pool is whole afterwards (every chunk free, rings empty);
- a sampler thread's stats() snapshots never see worker_blocked or
  worker_blocked_ns go back, and a stream has blocked time iff it blocked.

test_blocked_stream_shows_its_wait_under_threads: a lossless pair, one stream
stalling, the other's wait seen growing by stats() while it is still blocked.

The cases run in a child process (a crash or hang must not take pytest with it).
``python tests/core/test_chunk_group_stress.py FIRST LAST`` runs seeds FIRST..LAST-1.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)           # the shared helpers
sys.path.insert(0, TESTS)

from spead_packets import heap_packets  # noqa: E402

POSITION_ID, PAYLOAD_ID = 0x1000, 0x1001
HEAP_BYTES = 128
SPINS = (0.0, 50e-6, 2e-3)      # ChunkGroup(spin=...): none, about the default, long


def payload(position: int) -> bytes:
    return position.to_bytes(8, "little") * (HEAP_BYTES // 8)


def make_case(seed: int) -> dict:
    rng = random.Random(seed)
    max_chunks = rng.randint(1, 4)
    case = {
        "seed": seed,
        "eviction": rng.choice(["lossy", "lossless"]),
        "n_streams": rng.randint(2, 4),
        "max_chunks": max_chunks,
        "pool": max_chunks + rng.randint(0, 3),
        "heaps_per_chunk": rng.choice([1, 2, 4, 8]),
        "when_full": "drop" if rng.random() < 0.1 else "wait",
        # mostly long enough never to expire while the consumer keeps up
        "wait_timeout": rng.choice([0.002, 0.02]) if rng.random() < 0.25 else 20.0,
        "idle_stream": rng.random() < 0.3,      # one stream stops sending half-way
    }
    positions = []
    p = rng.randint(0, 50)
    while len(positions) < 400:
        r = rng.random()
        if r < 0.01:
            p += case["heaps_per_chunk"] * rng.randint(1, 3 * max_chunks)      # jump ahead
        elif r < 0.05:
            p += 1                                                            # lost heap
        positions.append(p)
        p += 1
    case["positions"] = positions
    case["packet_payload"] = rng.choice([HEAP_BYTES, HEAP_BYTES // 2, 48])
    # Waits that sleep at once, spin the default time first, or spin long (most wakes
    # come during the spin; a short wait_timeout ends it).  From the seed, not the rng,
    # so that the other choices of a seed stay what they were.
    case["spin"] = SPINS[seed % len(SPINS)]
    # The consumer woken per chunk, per the default batch, or per `pool` chunks (more
    # than can ever be ready at once: it lingers until the free ring runs short).
    case["consumer_batch"] = (1, None, case["pool"])[seed // len(SPINS) % 3]
    return case


def stream_feeds(case: dict) -> list[list[list[bytes]]]:
    """Per stream, its heaps' packets in order (heap at position p -> stream p % n)."""
    n = case["n_streams"]
    feeds: list[list[list[bytes]]] = [[] for _ in range(n)]
    idle_from = case["positions"][len(case["positions"]) // 2]
    for p in case["positions"]:
        k = p % n
        if case["idle_stream"] and k == n - 1 and p >= idle_from:
            continue
        feeds[k].append(heap_packets(p + 1, [(POSITION_ID, p), (PAYLOAD_ID, payload(p))],
                                     packet_payload=case["packet_payload"]))
    return feeds


def run_case(case: dict) -> dict:
    """One case in this process; raises AssertionError on any violation."""
    from daqd import _spead

    rng = random.Random(case["seed"] + 1)
    hpc = case["heaps_per_chunk"]
    group = _spead.ChunkGroup(
        timestamp_item=POSITION_ID, timestamp_step=1, heaps_per_chunk=hpc,
        heap_bytes=HEAP_BYTES, max_chunks=case["max_chunks"], pool=case["pool"],
        eviction=case["eviction"], when_full=case["when_full"],
        wait_timeout=case["wait_timeout"], spin=case["spin"],
        consumer_batch=case["consumer_batch"])
    feeds = stream_feeds(case)
    streams = [group.add_stream(max_heaps=4) for _ in feeds]
    sent = set(case["positions"])
    if case["idle_stream"]:
        n = case["n_streams"]
        idle_from = case["positions"][len(case["positions"]) // 2]
        sent = {p for p in sent if not (p % n == n - 1 and p >= idle_from)}
    ids: list[int] = []
    present_positions: list[int] = []
    errors: list[str] = []
    may_hold = case["pool"] > case["max_chunks"]
    expected_zero = np.zeros(HEAP_BYTES, np.uint8)

    def check(chunk) -> None:
        cid = int(chunk.chunk_id)
        ids.append(cid)
        present = chunk.present.reshape(-1)
        data = chunk.data.reshape(hpc, HEAP_BYTES)
        for slot in range(hpc):
            position = cid * hpc + slot
            if present[slot]:
                present_positions.append(position)
                if position not in sent:
                    errors.append(f"chunk {cid} slot {slot}: present but never sent")
                elif data[slot].tobytes() != payload(position):
                    errors.append(f"chunk {cid} slot {slot}: wrong payload")
            elif not np.array_equal(data[slot], expected_zero):
                errors.append(f"chunk {cid} slot {slot}: missing but not zeroed")

    def consume() -> None:
        held = None
        for chunk in group:
            check(chunk)
            if rng.random() < 0.2:
                time.sleep(rng.random() * 0.002)
            if held is not None:
                held.release()
                held = None
            if may_hold and rng.random() < 0.3:
                held = chunk                    # given back after the next one
            else:
                chunk.release()
        if held is not None:
            held.release()

    def feed(stream, heaps, frng) -> None:
        i = 0
        while i < len(heaps):
            n = frng.randint(1, 12)
            stream.add_packets([p for h in heaps[i:i + n] for p in h])
            i += n
            r = frng.random()
            if r < 0.05:
                time.sleep(frng.random() * 0.01)      # idle for a while
            elif r < 0.3:
                time.sleep(0)
        stream.finish()

    done = threading.Event()

    def sample() -> None:
        # A wait shows in stats() while it lasts, and never goes backwards.
        last = [(0, 0)] * len(streams)
        while not done.is_set():
            for k, stream in enumerate(streams):
                st = stream.stats()
                now = (st["worker_blocked"], st["worker_blocked_ns"])
                if now[0] < last[k][0] or now[1] < last[k][1]:
                    errors.append(f"stream {k}: blocked counters went back: {last[k]} -> {now}")
                last[k] = now
            time.sleep(0.001)

    consumer = threading.Thread(target=consume)
    sampler = threading.Thread(target=sample)
    feeders = [threading.Thread(target=feed, args=(s, f, random.Random(case["seed"] * 31 + k)))
               for k, (s, f) in enumerate(zip(streams, feeds, strict=True))]
    consumer.start()
    sampler.start()
    for t in feeders:
        t.start()
    for t in feeders + [consumer]:
        t.join(60)
        assert not t.is_alive(), f"seed {case['seed']}: a thread is stuck"
    done.set()
    sampler.join(10)
    assert not errors, f"seed {case['seed']}: {errors[:5]}"
    for stream in streams:
        st = stream.stats()
        # Every wait takes some time; no time without a wait.
        assert st["worker_blocked_ns"] >= st["worker_blocked"], (case["seed"], st)
        assert (st["worker_blocked"] == 0) == (st["worker_blocked_ns"] == 0), (case["seed"], st)
    stats = group.stats()
    assert ids == sorted(set(ids)), f"seed {case['seed']}: chunk ids {ids}"
    assert len(present_positions) == len(set(present_positions))
    assert stats["chunks_completed"] == len(ids)
    assert stats["chunk_heaps_present"] == len(present_positions), stats
    n_sent = len(sent)
    lost = stats["chunk_heaps_too_old"] + stats["chunk_heaps_no_free_chunk"]
    assert stats["chunk_heaps_present"] + lost == n_sent, (case["seed"], stats)
    assert stats["heaps_complete"] == n_sent
    if case["eviction"] == "lossless" and case["when_full"] == "wait" \
            and case["wait_timeout"] > 1:
        # Every heap present, but those before the chunk of the first heap the group saw
        # (the window starts there: README, a deliberate difference from spead2).
        first = min(ids) * hpc
        assert {p for p in sent if p >= first} == set(present_positions), case["seed"]
        assert lost == len([p for p in sent if p < first]), (case["seed"], stats)
    assert group.pool_counts() == {"free": case["pool"], "open": 0, "ready": 0, "held": 0}
    assert group.free_ring_size == case["pool"] and group.data_ring_size == 0
    assert group.ended
    return {"chunks": len(ids), "present": len(present_positions), "lost": lost,
            "blocked": stats["worker_blocked"], "blocked_ms": stats["worker_blocked_ns"] / 1e6}


def run_blocked_case(rounds: int = 5, stall_timeout: float = 5.0) -> dict:
    """Two streams, lossless: one stalls `rounds` times half-way through its heaps;
    the other, racing ahead, waits on it.  A sampler thread must see the waiting
    stream's worker_blocked_ns grow while it is blocked, inside a batch (its
    batch-merged counters standing still), once per stall; the stalled stream
    carries on only when that has been seen (or after `stall_timeout`)."""
    from daqd import _spead

    hpc, max_chunks = 4, 2
    group = _spead.ChunkGroup(
        timestamp_item=POSITION_ID, timestamp_step=1, heaps_per_chunk=hpc,
        heap_bytes=HEAP_BYTES, max_chunks=max_chunks, pool=max_chunks + 2,
        eviction="lossless", when_full="wait", wait_timeout=20.0)
    fast, slow = group.add_stream(max_heaps=4), group.add_stream(max_heaps=4)
    n = 2 * hpc * max_chunks * (rounds + 2)
    heaps = {p: heap_packets(p + 1, [(POSITION_ID, p), (PAYLOAD_ID, payload(p))])
             for p in range(n)}
    seen = threading.Event()        # the sampler saw `fast` blocked, mid-batch
    done = threading.Event()
    errors: list[str] = []
    observed = []
    present = []

    def feed_fast() -> None:
        mine = [heaps[p] for p in range(0, n, 2)]
        for i in range(0, len(mine), 3):
            fast.add_packets([pkt for h in mine[i:i + 3] for pkt in h])
        fast.finish()

    def feed_slow() -> None:
        mine = [heaps[p] for p in range(1, n, 2)]
        per_round = len(mine) // (rounds + 1)
        for r in range(rounds + 1):
            slow.add_packets([pkt for h in mine[r * per_round:(r + 1) * per_round] for pkt in h])
            if r < rounds:
                observed.append(seen.wait(stall_timeout))
                seen.clear()
        slow.add_packets([pkt for h in mine[(rounds + 1) * per_round:] for pkt in h])
        slow.finish()

    def consume() -> None:
        for chunk in group:
            with chunk:
                present.append(int(chunk.present.sum()))

    def sample() -> None:
        last = fast.stats()
        while not done.is_set():
            time.sleep(0.002)
            now = fast.stats()
            if now["worker_blocked_ns"] < last["worker_blocked_ns"] \
                    or now["worker_blocked"] < last["worker_blocked"]:
                errors.append(f"went back: {last} -> {now}")
            if now["worker_blocked_ns"] > last["worker_blocked_ns"] \
                    and now["packets"] == last["packets"] and now["batches"] == last["batches"]:
                seen.set()
            last = now

    threads = [threading.Thread(target=f, daemon=True)
               for f in (feed_fast, feed_slow, consume)]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a thread is stuck"
    done.set()
    sampler.join(10)
    assert not errors, errors[:3]
    stats = group.stats()
    fast_stats = fast.stats()
    assert observed == [True] * rounds, observed
    assert fast_stats["worker_blocked"] >= rounds
    assert fast_stats["worker_blocked_ns"] > 0
    # Lossless, no timeout: every heap is present; each is counted once.
    assert stats["chunk_heaps_present"] == sum(present) == n, stats
    assert stats["chunk_heaps_too_old"] == stats["chunk_heaps_no_free_chunk"] == 0
    return {"blocked": fast_stats["worker_blocked"],
            "blocked_ms": fast_stats["worker_blocked_ns"] / 1e6}


def run_seeds(first: int, last: int, verbose: bool = False) -> None:
    for seed in range(first, last):
        case = make_case(seed)
        result = run_case(case)
        if verbose:
            brief = {k: v for k, v in case.items() if k != "positions"}
            print(seed, brief, result, flush=True)


def run_in_child(first: int, last: int, timeout: float) -> None:
    code = (f"import sys; sys.path[:0] = [{HERE!r}, {TESTS!r}]\n"
            "import test_chunk_group_stress as m\n"
            f"m.run_seeds({first}, {last})\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"seeds {first}..{last - 1}: hung (more than {timeout} s)")
    assert proc.returncode == 0, (
        f"seeds {first}..{last - 1}: exit status {proc.returncode}\n{proc.stderr.decode()[-3000:]}")


@pytest.mark.parametrize("block", range(4))
def test_group_under_threads(block):
    """16 cases per block, about a second or two each block."""
    run_in_child(16 * block, 16 * block + 16, timeout=120)


def test_blocked_stream_shows_its_wait_under_threads():
    code = (f"import sys; sys.path[:0] = [{HERE!r}, {TESTS!r}]\n"
            "import test_chunk_group_stress as m\n"
            "print(m.run_blocked_case())\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                              timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("hung (more than 120 s)")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("block", range(10))
def test_group_under_threads_long(block):
    run_in_child(1000 + 50 * block, 1000 + 50 * block + 50, timeout=600)


if __name__ == "__main__":
    a, b = (int(x) for x in sys.argv[1:3]) if len(sys.argv) > 2 else (0, 100)
    run_seeds(a, b, verbose="-v" in sys.argv)
