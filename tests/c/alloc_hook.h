/*
 * alloc_hook.h - routes the core's heap calls through a counting allocator.
 *
 * tests/c/Makefile renames the core's references to malloc, calloc,
 * realloc, aligned_alloc, posix_memalign and free in the compiled objects
 * (objcopy --redefine-sym) to the functions below, so every heap call of
 * the csrc sources goes through alloc_hook.c while the tests keep the real
 * allocator. The tests use it to fail the n-th allocation on purpose and to
 * check that no block is still live after a call returns, on success and on
 * every error path.
 */
#ifndef ASTRO_TEST_ALLOC_HOOK_H
#define ASTRO_TEST_ALLOC_HOOK_H

#include <stddef.h>
#include <stdint.h>

void *astro_test_malloc(size_t size);
void *astro_test_calloc(size_t count, size_t size);
void *astro_test_realloc(void *pointer, size_t size);
void *astro_test_aligned_alloc(size_t alignment, size_t size);
int astro_test_posix_memalign(void **pointer, size_t alignment, size_t size);
void astro_test_free(void *pointer);

/*
 * Makes allocation number `index` (0-based, counted from this call) and every
 * later one fail until the next call; -1 turns failures off. Also resets the
 * allocation counter.
 */
void astro_test_alloc_fail_from(int64_t index);

/* Allocations attempted since the last astro_test_alloc_fail_from(). */
int64_t astro_test_alloc_attempts(void);

/* Blocks allocated by the core and not yet freed. */
int64_t astro_test_alloc_live(void);

#endif /* ASTRO_TEST_ALLOC_HOOK_H */
