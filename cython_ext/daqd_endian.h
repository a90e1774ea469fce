/* Unaligned big-endian loads and stores used by the SPEAD decoder.
 * memcpy keeps them legal on any alignment; gcc turns each into one mov + bswap. */
#ifndef DAQD_ENDIAN_H
#define DAQD_ENDIAN_H
#include <stdint.h>
#include <string.h>

static inline uint64_t load_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

static inline uint32_t load_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

static inline uint16_t load_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return __builtin_bswap16(v);
}

static inline uint32_t load_le32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void store_be64(void *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
}

static inline void store_be16(void *p, uint16_t v)
{
    v = __builtin_bswap16(v);
    memcpy(p, &v, 2);
}

static inline void store_le32(void *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static inline void store_le16(void *p, uint16_t v)
{
    memcpy(p, &v, 2);
}
#endif
