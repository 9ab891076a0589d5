/*
 * internal.h - helpers shared by the core's source files; not installed.
 */
#ifndef ASTRO_INTERNAL_H
#define ASTRO_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>

#include "astro.h"

/* Returns 1 when the caller's cancel hook requests a stop. */
int astro_cancel_requested(const astro_cancel *cancel);

/* Allocates count elements of size bytes, or NULL on overflow or failure. */
static inline void *astro_alloc(int64_t count, size_t size)
{
    if (count < 0 || (count > 0 && (uint64_t)count > SIZE_MAX / size))
        return NULL;
    return malloc(count == 0 ? 1 : (size_t)count * size);
}

/* Returns 1 when all n values are finite (no NaN, no Inf). */
int astro_all_finite(const float *x, int64_t n);

/* Transposes a rows x cols row-major matrix into dst (cols x rows). */
void astro_transpose(const float *src, int64_t rows, int64_t cols, float *dst);
void astro_transpose_u8(const uint8_t *src, int64_t rows, int64_t cols,
                        uint8_t *dst);

/* Number of groups of `group_size` columns over `in` (1 when -1). */
static inline int64_t astro_num_groups(int64_t in, int64_t group_size)
{
    return group_size > 0 ? (in + group_size - 1) / group_size : 1;
}

/* Checks bits, group size and MSE options; returns INVALID_ARGUMENT or OK. */
astro_status astro_quant_params_check(const astro_quant_params *params);

#endif /* ASTRO_INTERNAL_H */
