/* Short waits between receive threads without a sleep.
 *
 * The threads of a chunk group wait on each other for a few microseconds at a
 * time (a lossless eviction waiting for the other stream to move on).  A futex sleep and the wake-up
 * that ends it cost tens of microseconds on a VM (an inter-processor
 * interrupt through the hypervisor, a context switch each way), more than
 * such a wait.  So the group's lock spins before it sleeps (glibc's adaptive
 * mutex), and a waiter spins a bounded time on the group's wake-up count
 * before it sleeps on the condition variable (ChunkGroup.wait_for_change).
 */
#ifndef DAQD_SPIN_H
#define DAQD_SPIN_H

#include <pthread.h>

/* One pause of a spin loop: the CPU's hint that this is a spin (it saves
 * power and leaves the core to a sibling hyper-thread). */
static inline void daqd_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A mutex that spins a little before it sleeps when taken (glibc's
 * PTHREAD_MUTEX_ADAPTIVE_NP), a plain one elsewhere. */
static inline int daqd_mutex_init(pthread_mutex_t *m)
{
#if defined(__GLIBC__) && defined(__USE_GNU)
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc == 0)
        rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
    if (rc == 0)
        rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc == 0)
        return 0;
#endif
    return pthread_mutex_init(m, NULL);
}

#endif
