/*
 * test_util.h - check macros, seeded random numbers, exact-size buffers and
 * slow reference code shared by the C tests and the fuzz driver.
 *
 * Buffers come from malloc with their exact size, so AddressSanitizer stops
 * the run on the first read or write past the end of any input or output.
 */
#ifndef ASTRO_TEST_UTIL_H
#define ASTRO_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>

#include "astro.h"

/* ------------------------------------------------------------------------ */
/* Checks                                                                    */
/* ------------------------------------------------------------------------ */

/* Failed checks since the counter was last reset by the runner. */
extern long test_failed_checks;

void test_report_failure(const char *file, int line, const char *condition,
                         const char *format, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a failure (with a printf-style explanation) unless `condition`. */
#define CHECK(condition, ...)                                              \
    do {                                                                   \
        if (!(condition))                                                  \
            test_report_failure(__FILE__, __LINE__, #condition,            \
                                __VA_ARGS__);                              \
    } while (0)

/* Checks that `call` returns the status `expected`. */
#define CHECK_STATUS(call, expected)                                       \
    do {                                                                   \
        astro_status status_ = (call);                                     \
        CHECK(status_ == (expected), "%s returned %d (%s), expected %d",   \
              #call, (int)status_, astro_status_message(status_),          \
              (int)(expected));                                            \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Random numbers (splitmix64: fixed seeds make every run identical)         */
/* ------------------------------------------------------------------------ */

typedef struct test_rng {
    uint64_t state;
} test_rng;

void test_rng_seed(test_rng *rng, uint64_t seed);
uint64_t test_rng_next(test_rng *rng);
/* Uniform in [0, 1). */
double test_rng_uniform(test_rng *rng);
/* Standard normal (Box-Muller). */
double test_rng_normal(test_rng *rng);
/* Uniform integer in [0, n), n > 0. */
int64_t test_rng_below(test_rng *rng, int64_t n);

/* ------------------------------------------------------------------------ */
/* Buffers                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Allocate exactly `count` elements (at least one byte). Float buffers start
 * as NaN and byte buffers as 0xEE so an output the core forgot to write
 * shows up. Every buffer is freed by test_free_all().
 */
float *test_floats(int64_t count);
uint8_t *test_bytes(int64_t count);
int32_t *test_ints(int64_t count);
double *test_doubles(int64_t count);
void test_free_all(void);

/* Fill with independent standard normal values times `scale`. */
void test_fill_normal(test_rng *rng, float *x, int64_t count, float scale);

/*
 * Build H = (2 / tokens) X^T X (in x in, full symmetric) from a random
 * tokens x in X; the result is positive definite when tokens >= in.
 */
float *test_random_hessian(test_rng *rng, int64_t in, int64_t tokens);

/* ------------------------------------------------------------------------ */
/* Reference quantizer and result checks                                     */
/* ------------------------------------------------------------------------ */

static inline int test_maxq(int bits)
{
    return (1 << bits) - 1;
}

/*
 * Computes scale and zero of `count` values x[j * stride] with the min-max
 * rule of astro.h: the range includes 0, an all-zero range becomes [-1, 1],
 * and symmetric ranges are [-m, m] with m = max |x| and zero = 2^(bits-1).
 * (The GPTQ reference implementation keeps [0, m] for a symmetric group
 * with no negative value; astro.h does not.)
 */
void ref_find_params(int bits, int sym, const float *x, int64_t count,
                     int64_t stride, float *scale, float *zero);

/* Code of x under (scale, zero): clamp(rint(x / scale) + zero, 0, maxq). */
uint8_t ref_quantize(int bits, float x, float scale, float zero);

/* 1 when x / scale lies within `margin` of a rounding tie (k + 0.5). */
int ref_near_tie(float x, float scale, float margin);

/*
 * Checks the invariants of any quantized layer (out x in, `groups` groups):
 * codes in [0, maxq]; g_idx in [0, groups); scales finite and > 0; zeros
 * integers in [0, maxq]; dequant[r, c] == scales[r, g] * (codes[r, c] -
 * zeros[r, g]) exactly; astro_dequantize() reproduces dequant bit for bit.
 * `label` prefixes failure messages.
 */
void check_quantized_layer(const char *label, int bits, int64_t out,
                           int64_t in, int64_t groups, const uint8_t *codes,
                           const float *scales, const float *zeros,
                           const int32_t *g_idx, const float *dequant);

/* 1 when every value is finite. */
int all_finite(const float *x, int64_t count);

#endif /* ASTRO_TEST_UTIL_H */
