/* Memory-path helpers that Cython cannot express: the fence after streaming
 * (non-temporal) stores, software prefetches, and the cache size.
 *
 * Large outputs are written around the cache (the stores themselves are in
 * _elementwise.h): the write does not first read the destination line from
 * memory, and it does not evict data a kernel is about to read again.  Values
 * are unchanged; only the path to memory is.
 */
#ifndef CNORM_STREAM_H
#define CNORM_STREAM_H

#include <stddef.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* Order earlier streaming stores before anything that follows. */
static inline void cnorm_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* GCC does not count a prefetch as a side effect: a Cython helper that only
 * prefetches (batch norm's prefetch_run) was found "const" by GCC 12, and every
 * call to it deleted.  An empty volatile asm statement is a side effect that
 * the compiler keeps, and it costs no instruction. */
#if defined(__GNUC__)
#define CNORM_KEEP() __asm__ __volatile__("")
#else
#define CNORM_KEEP() ((void)0)
#endif

/* Ask for the n bytes at p to be brought into cache, one request per line. */
static inline void cnorm_prefetch(const void *p, size_t n)
{
    const char *c = (const char *)p;
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(c + o, 0, 3);
    CNORM_KEEP();
}

/* The same into the outer caches only (L2), for data wanted a while later: the
 * next segment's blocks, asked for while this one's output pass runs. */
static inline void cnorm_prefetch_l2(const void *p, size_t n)
{
    const char *c = (const char *)p;
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(c + o, 0, 2);
    CNORM_KEEP();
}

/* The same for n bytes about to be written (a write hint where the CPU has one). */
static inline void cnorm_prefetch_write(void *p, size_t n)
{
    char *c = (char *)p;
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(c + o, 1, 3);
    CNORM_KEEP();
}

/* Whether the loops make the whole-row prefetch bursts that other requests make
 * redundant or that stalled the loop on some CPUs: a 1-4 KiB layer-norm row's own
 * output, asked for before its statistics passes (forward_row), and a 512 B - 4 KiB
 * run asked for whole as a run starts when the lane loop also asks for it step by
 * step (prefetch_run).  cnorm._dispatch sets it once, by CPU; prefetches only, so
 * either value gives the same bits.  Each kernel module has its own copy. */
#if defined(__GNUC__)
static int cnorm_prefetch_bursts __attribute__((unused)) = 1;
#else
static int cnorm_prefetch_bursts = 1;
#endif
static inline void cnorm_set_prefetch_bursts(int on) { cnorm_prefetch_bursts = on; }

/* Half the L2's bytes (256 KiB where the system does not say), found once: the
 * most that the plane kernels prefetch of a next segment, so that it and the
 * segment in hand share the L2. */
static inline long cnorm_next_segment_max(void)
{
    static long v = 0;
#if defined(__GNUC__)
    long r = __atomic_load_n(&v, __ATOMIC_RELAXED);
#else
    long r = v;
#endif
    if (r == 0) {
        r = 262144;
#if defined(_SC_LEVEL2_CACHE_SIZE)
        {
            long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
            if (l2 > 0)
                r = l2 / 2;
        }
#endif
#if defined(__GNUC__)
        __atomic_store_n(&v, r, __ATOMIC_RELAXED);
#else
        v = r;
#endif
    }
    return r;
}

/* Bytes of last-level cache, or 0 when the system does not say. */
static inline long cnorm_llc_bytes(void)
{
#if defined(_SC_LEVEL3_CACHE_SIZE)
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0)
        return l3;
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE)
    {
        long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
        if (l2 > 0)
            return l2;
    }
#endif
    return 0;
}

#endif
