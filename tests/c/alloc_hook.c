/*
 * alloc_hook.c - the counting, failure-injecting allocator behind alloc_hook.h.
 *
 * The core may allocate from inside OpenMP parallel loops, so the counters
 * are updated with atomic builtins.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdlib.h>

#include "alloc_hook.h"

static int64_t fail_from = -1;
static int64_t attempts = 0;
static int64_t live = 0;

void astro_test_alloc_fail_from(int64_t index)
{
    __atomic_store_n(&attempts, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&fail_from, index, __ATOMIC_SEQ_CST);
}

int64_t astro_test_alloc_attempts(void)
{
    return __atomic_load_n(&attempts, __ATOMIC_SEQ_CST);
}

int64_t astro_test_alloc_live(void)
{
    return __atomic_load_n(&live, __ATOMIC_SEQ_CST);
}

/* Counts one attempt and returns 1 when it must fail. */
static int next_allocation_fails(void)
{
    int64_t index = __atomic_fetch_add(&attempts, 1, __ATOMIC_SEQ_CST);
    int64_t limit = __atomic_load_n(&fail_from, __ATOMIC_SEQ_CST);
    return limit >= 0 && index >= limit;
}

static void *count_block(void *block)
{
    if (block != NULL)
        __atomic_fetch_add(&live, 1, __ATOMIC_SEQ_CST);
    return block;
}

void *astro_test_malloc(size_t size)
{
    if (next_allocation_fails())
        return NULL;
    return count_block(malloc(size));
}

void *astro_test_calloc(size_t count, size_t size)
{
    if (next_allocation_fails())
        return NULL;
    return count_block(calloc(count, size));
}

void *astro_test_realloc(void *pointer, size_t size)
{
    if (next_allocation_fails())
        return NULL;
    void *block = realloc(pointer, size);
    if (block != NULL && pointer == NULL)
        __atomic_fetch_add(&live, 1, __ATOMIC_SEQ_CST);
    return block;
}

void *astro_test_aligned_alloc(size_t alignment, size_t size)
{
    if (next_allocation_fails())
        return NULL;
    return count_block(aligned_alloc(alignment, size));
}

int astro_test_posix_memalign(void **pointer, size_t alignment, size_t size)
{
    if (next_allocation_fails())
        return ENOMEM;
    int result = posix_memalign(pointer, alignment, size);
    if (result == 0)
        count_block(*pointer);
    return result;
}

void astro_test_free(void *pointer)
{
    if (pointer != NULL)
        __atomic_fetch_sub(&live, 1, __ATOMIC_SEQ_CST);
    free(pointer);
}
