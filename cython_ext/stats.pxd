# Receive statistics: one flat array of uint64 counters per stream, and the
# one list of their names.
#
# Header-only (no stats.pyx).  spead.pyx *includes* this file rather than
# cimporting it: Cython turns a `cpdef enum` into a Python IntEnum only in the
# module whose source holds it, never in a module that cimports it (checked
# with Cython 3.2), and this way daqd._spead.StatIndex is made from this very
# enum.  So only spead.pyx may use it (packet.pxd does not), and the counter
# names seen from Python (daqd._spead.STAT_NAMES, daqd.recv.counters.StatIndex,
# every stats() dict) are the member names below without "STAT_", lowercased.
#
# The hot loop adds into a stack-local array and merges it into the stream's
# array once per batch (spead2's batch_stats), so the shared array is only
# touched once per batch.  The exceptions are a chunk stream's waits on its
# group (worker_blocked, worker_blocked_ns): kept under the group lock and
# added in by stats(), so that a wait shows while it lasts.  Every counter is a
# monotonic sum except the ones stat_is_maximum() names (spead2's
# stream_stat_config::mode).
#
# Add new counters at the end of a group, and document them in
# docs/monitoring.md in the same change (tests/core/test_counters.py checks it).

cpdef enum StatIndex:
    # spead2's stream statistics, same names and meaning
    STAT_PACKETS                                # packets handed to the decoder
    STAT_BATCHES                                # batches of packets processed
    STAT_HEAPS                                  # heaps that left assembly (complete or not)
    STAT_INCOMPLETE_HEAPS_EVICTED               # evicted from the max_heaps window incomplete
    STAT_INCOMPLETE_HEAPS_FLUSHED               # incomplete when the stream ended/flushed
    STAT_SINGLE_PACKET_HEAPS                    # heaps completed by their first packet
    STAT_WORKER_BLOCKED                         # times the receive loop waited on its group
    STAT_MAX_BATCH                              # largest batch seen (maximum, not a sum)
    # daqd's own totals
    STAT_BYTES                                  # bytes of all packets handed to the decoder
    STAT_PAYLOAD_BYTES                          # payload bytes accepted into heaps
    STAT_HEAPS_COMPLETE                         # heaps delivered complete
    STAT_STOP_HEAPS                             # heaps carrying a stream-control stop item
    STAT_WORKER_BLOCKED_NS                      # time the receive loop waited (sum, ns)
    # packets not used, one counter per reason (the first eight in the order of
    # packet.pxd's DecodeStatus: decode_status_stat maps them by position)
    STAT_PACKETS_REJECTED_TOO_SHORT             # shorter than the 8-byte header
    STAT_PACKETS_REJECTED_BAD_MAGIC             # first byte is not 0x53
    STAT_PACKETS_REJECTED_BAD_VERSION           # version byte is not 4
    STAT_PACKETS_REJECTED_BAD_FLAVOUR           # not SPEAD-64-XX with XX a multiple of 8
    STAT_PACKETS_REJECTED_ITEMS_OVERFLOW        # item pointers run past the end of the packet
    STAT_PACKETS_REJECTED_MISSING_ITEMS         # no HEAP_CNT, HEAP_OFFSET or PAYLOAD_LENGTH
    STAT_PACKETS_REJECTED_PAYLOAD_LENGTH        # PAYLOAD_LENGTH larger than the packet holds
    STAT_PACKETS_REJECTED_PAYLOAD_OUTSIDE_HEAP  # HEAP_OFFSET + PAYLOAD_LENGTH > HEAP_SIZE
    STAT_PACKETS_REJECTED_HEAP_TOO_LARGE        # heap would exceed max_heap_size
    STAT_PACKETS_REJECTED_INCONSISTENT_HEAP     # HEAP_SIZE or flavour disagrees with the heap
    STAT_PACKETS_REJECTED_OUT_OF_ORDER          # offset behind the heap's data, in-order mode
    STAT_PACKETS_REJECTED_DUPLICATE             # payload range already received
    STAT_PACKETS_REJECTED_AFTER_STOP            # arrived after the stream stopped
    STAT_PACKETS_REJECTED_TRUNCATED             # datagram longer than max_packet_size
    STAT_PACKETS_REJECTED_NO_MEMORY             # allocation for the heap failed
    STAT_PACKETS_REJECTED_UNSIZED               # no HEAP_SIZE (chunk mode; allow_unsized_heaps off)
    STAT_PACKETS_REJECTED_HEAP_OVER_BUDGET      # heap mode: heap alone over max_live_heap_bytes
    # reader-level counters
    STAT_STREAM_BYTES_SKIPPED                   # bytes skipped to resynchronise a byte stream
    STAT_PCAP_FRAMES_SKIPPED_NOT_UDP            # pcap frames that are not IPv4/IPv6 UDP
    STAT_PCAP_FRAMES_SKIPPED_FRAGMENT           # pcap frames that are IP fragments
    STAT_PCAP_FRAMES_SKIPPED_PORT               # pcap frames to another destination port
    STAT_PCAP_RECORDS_TRUNCATED                 # pcap record cut short (file or frame end)
    STAT_PACKETS_DROPPED_SOCKET_BUFFER          # datagrams the kernel dropped (socket buffer full)
    STAT_PACKETS_TAP_DROPPED                    # packets the packet tap (pcap sink) had no room for
    STAT_FILE_BYTES_TRUNCATED                   # bytes of a mapped file: lost to it being truncated
    # chunk mode; a heap is counted once, on its first packet
    STAT_CHUNKS_COMPLETED                       # chunks handed to the data ring
    STAT_CHUNK_HEAPS_PLACED                     # heaps given a slot in an open chunk
    STAT_CHUNK_HEAPS_PRESENT                    # placed heaps that completed (present set)
    STAT_CHUNK_HEAPS_TOO_OLD                    # chunk already left the window (spead2 too_old)
    STAT_CHUNK_HEAPS_REJECTED_SIZE              # HEAP_SIZE is not the layout's heap_bytes
    STAT_CHUNK_HEAPS_REJECTED_NO_TIMESTAMP      # timestamp item missing
    STAT_CHUNK_HEAPS_REJECTED_MISALIGNED        # timestamp not a multiple of timestamp_step
    STAT_CHUNK_HEAPS_REJECTED_SUBSTREAM         # substream item missing or >= substreams
    STAT_CHUNK_HEAPS_REJECTED_BY_PLACE          # placement hook left chunk_id negative
    STAT_CHUNK_HEAPS_REJECTED_PLACEMENT         # hook's slot or offset outside the chunk
    STAT_CHUNK_HEAPS_NO_FREE_CHUNK              # no free chunk for the heap's chunk (when_full)
    STAT_CHUNK_PACKETS_DISCARDED                # packets of heaps not placed, or whose chunk left
    STAT_CHUNK_SLOTS_MISSING                    # slots of completed chunks without a complete heap
    STAT_CHUNK_WINDOW_RESETS                    # window re-anchored after a run of too-old heaps
    STAT_DESCRIPTOR_PACKETS_DROPPED             # descriptor heaps' packets with no room kept aside
    # tcp:// sources (the listener serves sender after sender)
    STAT_TCP_CONNECTIONS_ACCEPTED               # peers accepted
    STAT_TCP_CONNECTIONS_CLOSED                 # peers that closed (or reset) their connection
    STAT_TCP_CONNECTIONS_REFUSED                # peers closed at once: every peer slot was taken
    STAT_TCP_BYTES_RECEIVED                     # bytes read from peers
    STAT_TCP_BYTES_TRUNCATED                    # bytes of a packet cut off by its peer closing
    STAT_TCP_CONNECTIONS_EVICTED                # idlest peer closed to make room for a new one
    STAT_TCP_CONNECTIONS_IDLE_CLOSED            # peers closed after idle_timeout without a byte
    N_STATS                                     # not a counter: how many there are


cdef inline bint stat_is_maximum(int index) noexcept nogil:
    """Whether counter `index` keeps a maximum (merged by max) rather than a sum."""
    return index == STAT_MAX_BATCH
