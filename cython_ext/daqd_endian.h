/* Unaligned big-endian loads and stores used by the SPEAD decoder.
 * memcpy keeps them legal on any alignment; gcc turns each into one mov + bswap. */
#ifndef DAQD_ENDIAN_H
#define DAQD_ENDIAN_H
#include <stdint.h>
#include <string.h>

/* One definition per width and byte order: NAME(p) loads, NAME(p, v) stores. */
#define DAQD_LOAD(name, type, order) \
    static inline type name(const void *p) { type v; memcpy(&v, p, sizeof v); return order(v); }
#define DAQD_STORE(name, type, order) \
    static inline void name(void *p, type v) { v = order(v); memcpy(p, &v, sizeof v); }
#define DAQD_AS_IS(v) (v)

DAQD_LOAD(load_be64, uint64_t, __builtin_bswap64)
DAQD_LOAD(load_be32, uint32_t, __builtin_bswap32)
DAQD_LOAD(load_be16, uint16_t, __builtin_bswap16)
DAQD_LOAD(load_le32, uint32_t, DAQD_AS_IS)
DAQD_STORE(store_be64, uint64_t, __builtin_bswap64)
DAQD_STORE(store_be16, uint16_t, __builtin_bswap16)
DAQD_STORE(store_le32, uint32_t, DAQD_AS_IS)
DAQD_STORE(store_le16, uint16_t, DAQD_AS_IS)
#endif
