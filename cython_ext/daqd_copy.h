/* Payload copy into chunk memory.
 *
 * Chunk data is written once by the receive loop and read much later by a
 * sink, so caching it only evicts the receive buffers and live state.  On
 * x86-64, blocks of at least DAQD_STREAM_MIN bytes are copied with
 * non-temporal (streaming) stores: on the project's 2-core VMs AVX2 streaming
 * stores copied 8 KiB blocks into a large destination about 1.5x faster than
 * glibc memcpy (DESIGN.md).  The caller issues daqd_copy_fence() once per
 * batch, before the chunk can be seen by another thread.  Small copies and
 * other architectures use memcpy.
 *
 * A stream's `memcpy` choice (spead2's MEMCPY_STD / MEMCPY_NONTEMPORAL) is one
 * of the two daqd_copy_fn below, set once per stream: the receive loop calls
 * it through a pointer, with no test per packet.
 */
#ifndef DAQD_COPY_H
#define DAQD_COPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DAQD_STREAM_MIN 1024

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx2")))
static void daqd_copy_stream_avx2(uint8_t *dst, const uint8_t *src, size_t n)
{
    /* Bring dst to 32-byte alignment with one ordinary unaligned store. */
    size_t head = (32 - ((uintptr_t) dst & 31)) & 31;
    if (head) {
        _mm256_storeu_si256((__m256i *) dst, _mm256_loadu_si256((const __m256i *) src));
        dst += head;
        src += head;
        n -= head;
    }
    while (n >= 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *) src);
        __m256i b = _mm256_loadu_si256((const __m256i *) (src + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *) (src + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *) (src + 96));
        _mm256_stream_si256((__m256i *) dst, a);
        _mm256_stream_si256((__m256i *) (dst + 32), b);
        _mm256_stream_si256((__m256i *) (dst + 64), c);
        _mm256_stream_si256((__m256i *) (dst + 96), d);
        src += 128;
        dst += 128;
        n -= 128;
    }
    while (n >= 32) {
        _mm256_stream_si256((__m256i *) dst, _mm256_loadu_si256((const __m256i *) src));
        src += 32;
        dst += 32;
        n -= 32;
    }
    if (n)
        memcpy(dst, src, n);
}

static void daqd_copy_stream_sse2(uint8_t *dst, const uint8_t *src, size_t n)
{
    size_t head = (16 - ((uintptr_t) dst & 15)) & 15;
    if (head) {
        _mm_storeu_si128((__m128i *) dst, _mm_loadu_si128((const __m128i *) src));
        dst += head;
        src += head;
        n -= head;
    }
    while (n >= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *) src);
        __m128i b = _mm_loadu_si128((const __m128i *) (src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *) (src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *) (src + 48));
        _mm_stream_si128((__m128i *) dst, a);
        _mm_stream_si128((__m128i *) (dst + 16), b);
        _mm_stream_si128((__m128i *) (dst + 32), c);
        _mm_stream_si128((__m128i *) (dst + 48), d);
        src += 64;
        dst += 64;
        n -= 64;
    }
    if (n)
        memcpy(dst, src, n);
}

/* 1: AVX2, 0: SSE2; decided once. */
static int daqd_copy_use_avx2 = -1;

static inline void daqd_copy_init(void)
{
    if (daqd_copy_use_avx2 < 0) {
        __builtin_cpu_init();
        daqd_copy_use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
}

static inline void daqd_copy_payload(uint8_t *dst, const uint8_t *src, size_t n)
{
    if (n < DAQD_STREAM_MIN)
        memcpy(dst, src, n);
    else if (daqd_copy_use_avx2 == 1)
        daqd_copy_stream_avx2(dst, src, n);
    else
        daqd_copy_stream_sse2(dst, src, n);
}

static inline void daqd_copy_fence(void)
{
    _mm_sfence();
}

#else

static inline void daqd_copy_init(void) {}
static inline void daqd_copy_payload(uint8_t *dst, const uint8_t *src, size_t n)
{
    memcpy(dst, src, n);
}
static inline void daqd_copy_fence(void) {}

#endif

/* The two payload copies a stream chooses from (its `memcpy`). */
typedef void (*daqd_copy_fn)(uint8_t *dst, const uint8_t *src, size_t n);

static void daqd_copy_standard(uint8_t *dst, const uint8_t *src, size_t n)
{
    memcpy(dst, src, n);
}

static void daqd_copy_nontemporal(uint8_t *dst, const uint8_t *src, size_t n)
{
    daqd_copy_payload(dst, src, n);
}

#endif /* DAQD_COPY_H */
