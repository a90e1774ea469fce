/* daqd's compiled placement hook: the ABI between daqd and user code.
 *
 * For layouts the declarative [stream.chunk] keys cannot express, a stream
 * can be given a C function that decides where each heap goes.  daqd calls it
 * from the receive loop, without the GIL, once per heap (on the heap's first
 * packet), so it must not touch Python objects.  It receives the values of
 * the immediate items it asked for (`place_items`), in that order, and fills
 * in the outputs.  Leaving chunk_id at -1 rejects the heap (counted as
 * chunk_heaps_rejected_by_place).  daqd checks the outputs against the
 * chunk's shape: heap_index < heaps_per_chunk * substreams and
 * heap_offset + heap length <= chunk data bytes, or the heap is rejected
 * (chunk_heaps_rejected_placement).
 *
 * The function is handed to daqd as a PyCapsule whose pointer is the
 * function and whose context is `user_data`, named for the version of this
 * ABI the hook was built against:
 *   DAQD_PLACE_CAPSULE     ("daqd.place_v1") the fields up to n_extra;
 *   DAQD_PLACE_CAPSULE_V2  ("daqd.place_v2") also `counters`: the hook's own
 *                          counters (spead2's add_stat), declared by name
 *                          when the stream is made (ChunkGroup's
 *                          place_counters; a hook object's `counters`), at
 *                          most DAQD_PLACE_MAX_COUNTERS.  The hook adds to
 *                          counters[i]; daqd reports counter i of every
 *                          stream as `place_<name>` with the stream's own
 *                          counters (stats, status, Prometheus).
 * daqd fills every field of both versions, so a v1 hook keeps working; a v2
 * hook is refused by a daqd that only knows v1.  See examples/place_hook/
 * for a complete Cython example and daqd.get_include() for this header's
 * directory.
 */
#ifndef DAQD_PLACE_H
#define DAQD_PLACE_H

#include <stddef.h>
#include <stdint.h>

#define DAQD_PLACE_CAPSULE "daqd.place_v1"
#define DAQD_PLACE_CAPSULE_V2 "daqd.place_v2"
#define DAQD_PLACE_MAX_COUNTERS 16

typedef struct daqd_place_data {
    const uint8_t *packet;   /* the heap's first packet (header, pointers, payload) */
    size_t packet_size;
    const int64_t *items;    /* values of place_items, -1 where the packet lacks one */
    size_t n_items;
    int64_t heap_length;     /* HEAP_SIZE of the heap */
    int64_t chunk_id;        /* out: the chunk; -1 (preset) rejects the heap */
    size_t heap_index;       /* out: the heap's slot, indexes `present` */
    size_t heap_offset;      /* out: byte offset of the heap in the chunk's data */
    uint64_t *extra;         /* out: n_extra values stored in `extra` for the slot
                                (preset to the declared extra items' values) */
    size_t n_extra;
    /* version 2 (DAQD_PLACE_CAPSULE_V2) */
    uint64_t *counters;      /* in/out: the hook's counters, in the order declared; add to them */
    size_t n_counters;
} daqd_place_data;

typedef void (*daqd_place_fn)(daqd_place_data *data, void *user_data);

#endif /* DAQD_PLACE_H */
