/* File mappings that survive the file being truncated under them.
 *
 * A `file:` source reads a regular file through a read-only mapping.  If the
 * file is truncated while mapped, touching a page beyond its new end raises
 * SIGBUS, which would kill the process.  Each reader registers its mapping
 * here; one process-wide SIGBUS handler (installed once, chained to the
 * handler it replaced: Python's faulthandler, or the default action) looks the
 * faulting address up, and when it lies inside a registered mapping it maps
 * anonymous zero pages over the rest of that mapping (mmap is
 * async-signal-safe) and bumps the mapping's truncation count, then returns:
 * the faulting load is retried and reads zeros.  The reader sees the count
 * after its batch and stops at the file's new size.
 *
 * The registry is a fixed static array whose slots are claimed and published
 * with atomics: the handler takes no lock and allocates nothing.
 */
#ifndef DAQD_SIGBUS_H
#define DAQD_SIGBUS_H

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define DAQD_MAP_SLOTS 1024

enum { DAQD_SLOT_FREE = 0, DAQD_SLOT_CLAIMED = 1, DAQD_SLOT_LIVE = 2 };

typedef struct {
    int state;              /* DAQD_SLOT_*: LIVE is published with release order */
    uintptr_t base;
    size_t size;
    unsigned truncations;   /* SIGBUS faults taken inside the mapping */
    size_t zeroed_from;     /* offset of the first page mapped over with zeros */
} daqd_map_slot;

static daqd_map_slot daqd_maps[DAQD_MAP_SLOTS];
static struct sigaction daqd_sigbus_previous;
static int daqd_sigbus_installed;
static uintptr_t daqd_page_mask;

static void daqd_sigbus_chain(int sig, siginfo_t *info, void *context)
{
    struct sigaction *prev = &daqd_sigbus_previous;
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, info, context);
        return;
    }
    if (prev->sa_handler == SIG_IGN)
        return;
    if (prev->sa_handler == SIG_DFL) {
        /* The default action: restored, and raised again (delivered when this
           handler returns; a fault is retried and faults again anyway). */
        sigaction(sig, prev, NULL);
        raise(sig);
        return;
    }
    prev->sa_handler(sig);
}

static void daqd_sigbus_handler(int sig, siginfo_t *info, void *context)
{
    int i, saved_errno = errno;
    if (info != NULL && info->si_code > 0) {    /* raised by the kernel for a fault */
        uintptr_t addr = (uintptr_t)info->si_addr;
        for (i = 0; i < DAQD_MAP_SLOTS; i++) {
            daqd_map_slot *slot = &daqd_maps[i];
            if (__atomic_load_n(&slot->state, __ATOMIC_ACQUIRE) != DAQD_SLOT_LIVE)
                continue;
            if (addr < slot->base || addr - slot->base >= slot->size)
                continue;
            uintptr_t page = addr & daqd_page_mask;
            void *got = mmap((void *)page, slot->base + slot->size - page, PROT_READ,
                             MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (got == MAP_FAILED)
                break;          /* nothing to retry with: the previous handler's turn */
            /* Each later fault is below this one: the pages from here are zeros. */
            __atomic_store_n(&slot->zeroed_from, page - slot->base, __ATOMIC_RELAXED);
            __atomic_add_fetch(&slot->truncations, 1, __ATOMIC_RELEASE);
            errno = saved_errno;
            return;
        }
    }
    errno = saved_errno;
    daqd_sigbus_chain(sig, info, context);
}

/* Install the handler (once; the caller holds the GIL).  0, or -1 with errno. */
static int daqd_sigbus_install(void)
{
    struct sigaction action;
    if (daqd_sigbus_installed)
        return 0;
    daqd_page_mask = ~((uintptr_t)sysconf(_SC_PAGESIZE) - 1);
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = daqd_sigbus_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &daqd_sigbus_previous) != 0)
        return -1;
    daqd_sigbus_installed = 1;
    return 0;
}

/* Register a mapping: its slot, or -1 when every slot is taken. */
static int daqd_map_register(const void *base, size_t size)
{
    int i;
    for (i = 0; i < DAQD_MAP_SLOTS; i++) {
        daqd_map_slot *slot = &daqd_maps[i];
        int expected = DAQD_SLOT_FREE;
        if (!__atomic_compare_exchange_n(&slot->state, &expected, DAQD_SLOT_CLAIMED, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        slot->base = (uintptr_t)base;
        slot->size = size;
        __atomic_store_n(&slot->truncations, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&slot->zeroed_from, (size_t)-1, __ATOMIC_RELAXED);
        __atomic_store_n(&slot->state, DAQD_SLOT_LIVE, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

/* Forget a mapping (before it is unmapped). */
static void daqd_map_unregister(int i)
{
    __atomic_store_n(&daqd_maps[i].state, DAQD_SLOT_FREE, __ATOMIC_RELEASE);
}

/* SIGBUS faults taken inside slot `i`'s mapping so far. */
static inline unsigned daqd_map_truncations(int i)
{
    return __atomic_load_n(&daqd_maps[i].truncations, __ATOMIC_ACQUIRE);
}

/* Map `size` bytes of file `fd` read-only, read sequentially (MADV_SEQUENTIAL:
   the kernel reads ahead further): the address, or NULL with errno. */
static inline void *daqd_map_file(int fd, size_t size)
{
    void *base = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return NULL;
    madvise(base, size, MADV_SEQUENTIAL);
    return base;
}

/* Put zero pages over a whole mapping (the file let go, the addresses kept). */
static inline void daqd_map_zeros(void *base, size_t size)
{
    mmap(base, size, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/* Where slot `i`'s mapping holds zeros from (SIZE_MAX: nowhere); read after
   daqd_map_truncations (acquire). */
static inline size_t daqd_map_zeroed_from(int i)
{
    return __atomic_load_n(&daqd_maps[i].zeroed_from, __ATOMIC_RELAXED);
}

/* Populate `len` bytes of a mapping from `addr` (its page faults taken in
   bulk, in one call): 0; 1 if the kernel lacks MADV_POPULATE_READ (Linux <
   5.14: EINVAL); -1 on another failure (EFAULT: a page beyond the file's end). */
static inline int daqd_populate_read(const void *addr, size_t len)
{
    int saved_errno = errno;
    uintptr_t start = (uintptr_t)addr & daqd_page_mask;
    int rc = madvise((void *)start, (uintptr_t)addr + len - start, MADV_POPULATE_READ);
    if (rc != 0)
        rc = errno == EINVAL ? 1 : -1;
    errno = saved_errno;
    return rc;
}

#endif
