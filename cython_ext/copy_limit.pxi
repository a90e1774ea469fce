# The copy limit of ``daqd bench``: the payload bytes of a workload copied from
# its packet buffer into chunk memory, and nothing else.
#
# A receiver from memory cannot beat copying the payload of every packet to
# its place in a chunk: `CopyPlan` does exactly those copies, with the copy a
# chunk stream uses (daqd_copy.h, `standard` or `nontemporal`), from a list of
# (source offset, destination offset, length) triples worked out beforehand
# from the packets (no decoding, no window, no placement while it runs).  The
# benchmark tool computes the triples; this file only checks and runs them.

cimport cython


@cython.final
cdef class CopyPlan:
    """Copies of `lengths[i]` bytes from ``src[src_offsets[i]:]`` to ``dst[dst_offsets[i]:]``.

    Every triple is checked against the two buffers once, here; `run` then
    does all the copies without the GIL (one fence at the end, as a chunk
    stream issues once per batch).

    Parameters
    ----------
    src : buffer of uint8
        The packets (read only).
    dst : buffer of uint8
        The chunk memory the payloads go to.
    src_offsets, dst_offsets : uint64 arrays
        Where each copy starts in `src` and in `dst`.
    lengths : uint32 array
        The bytes of each copy.
    memcpy : str
        ``nontemporal`` (chunk mode's copy: streaming stores) or ``standard``
        (``memcpy``), as a stream's `memcpy`.

    Raises
    ------
    ValueError
        The arrays differ in length, a copy reaches outside a buffer, or
        `memcpy` names no copy.
    """

    cdef const uint8_t[::1] src
    cdef uint8_t[::1] dst
    cdef const uint64_t[::1] src_offsets
    cdef const uint64_t[::1] dst_offsets
    cdef const uint32_t[::1] lengths
    cdef daqd_copy_fn copy
    cdef readonly str memcpy
    cdef readonly uint64_t total_bytes     # bytes one `run` copies
    cdef readonly size_t copies            # copies one `run` makes

    def __init__(self, src, uint8_t[::1] dst, const uint64_t[::1] src_offsets,
                 const uint64_t[::1] dst_offsets, const uint32_t[::1] lengths, *,
                 str memcpy="nontemporal"):
        if memcpy not in ("standard", "nontemporal"):
            raise ValueError(f"memcpy must be standard or nontemporal, not {memcpy!r}")
        cdef size_t n = lengths.shape[0]
        if <size_t>src_offsets.shape[0] != n or <size_t>dst_offsets.shape[0] != n:
            raise ValueError("src_offsets, dst_offsets and lengths differ in length")
        self.src = memoryview(src).cast("B")
        self.dst = dst
        self.src_offsets = src_offsets
        self.dst_offsets = dst_offsets
        self.lengths = lengths
        cdef uint64_t src_size = self.src.shape[0], dst_size = dst.shape[0], total = 0
        cdef size_t i
        for i in range(n):
            if src_offsets[i] > src_size or lengths[i] > src_size - src_offsets[i]:
                raise ValueError(f"copy {i} reads past the end of src")
            if dst_offsets[i] > dst_size or lengths[i] > dst_size - dst_offsets[i]:
                raise ValueError(f"copy {i} writes past the end of dst")
            total += lengths[i]
        daqd_copy_init()
        self.copy = daqd_copy_standard if memcpy == "standard" else daqd_copy_nontemporal
        self.memcpy = memcpy
        self.total_bytes = total
        self.copies = n

    def run(self):
        """Make every copy once; return the bytes copied."""
        cdef size_t i, n = self.copies
        cdef const uint8_t *src = &self.src[0] if self.src.shape[0] else NULL
        cdef uint8_t *dst = &self.dst[0] if self.dst.shape[0] else NULL
        cdef const uint64_t *so = &self.src_offsets[0] if n else NULL
        cdef const uint64_t *do = &self.dst_offsets[0] if n else NULL
        cdef const uint32_t *ln = &self.lengths[0] if n else NULL
        cdef uint64_t total = 0
        with nogil:
            for i in range(n):
                self.copy(dst + do[i], src + so[i], ln[i])
                total += ln[i]
            daqd_copy_fence()
        return total
