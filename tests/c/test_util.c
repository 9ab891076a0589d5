/*
 * test_util.c - helpers declared in test_util.h.
 */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

long test_failed_checks = 0;

/* Only the first failures of a run are printed; all of them are counted. */
enum { PRINTED_FAILURES_MAX = 40 };

void test_report_failure(const char *file, int line, const char *condition,
                         const char *format, ...)
{
    test_failed_checks++;
    if (test_failed_checks > PRINTED_FAILURES_MAX)
        return;
    fprintf(stderr, "  FAIL %s:%d: %s\n    ", file, line, condition);
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

/* ------------------------------------------------------------------------ */
/* Random numbers                                                            */
/* ------------------------------------------------------------------------ */

void test_rng_seed(test_rng *rng, uint64_t seed)
{
    rng->state = seed;
}

uint64_t test_rng_next(test_rng *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double test_rng_uniform(test_rng *rng)
{
    return (double)(test_rng_next(rng) >> 11) * 0x1.0p-53;
}

double test_rng_normal(test_rng *rng)
{
    double u1 = test_rng_uniform(rng);
    double u2 = test_rng_uniform(rng);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

int64_t test_rng_below(test_rng *rng, int64_t n)
{
    return (int64_t)(test_rng_next(rng) % (uint64_t)n);
}

/* ------------------------------------------------------------------------ */
/* Buffers                                                                   */
/* ------------------------------------------------------------------------ */

static void **buffers = NULL;
static size_t buffer_count = 0;
static size_t buffer_capacity = 0;

static void *allocate_exact(int64_t count, size_t element_size)
{
    size_t bytes = count > 0 ? (size_t)count * element_size : 1;
    void *block = malloc(bytes);
    if (block == NULL) {
        fprintf(stderr, "test harness: malloc(%zu) failed\n", bytes);
        exit(2);
    }
    if (buffer_count == buffer_capacity) {
        buffer_capacity = buffer_capacity ? 2 * buffer_capacity : 64;
        buffers = realloc(buffers, buffer_capacity * sizeof *buffers);
        if (buffers == NULL) {
            fprintf(stderr, "test harness: out of memory\n");
            exit(2);
        }
    }
    buffers[buffer_count++] = block;
    return block;
}

float *test_floats(int64_t count)
{
    float *x = allocate_exact(count, sizeof(float));
    for (int64_t i = 0; i < count; i++)
        x[i] = NAN;
    return x;
}

uint8_t *test_bytes(int64_t count)
{
    uint8_t *x = allocate_exact(count, 1);
    memset(x, 0xEE, count > 0 ? (size_t)count : 1);
    return x;
}

int32_t *test_ints(int64_t count)
{
    int32_t *x = allocate_exact(count, sizeof(int32_t));
    for (int64_t i = 0; i < count; i++)
        x[i] = -12345;
    return x;
}

double *test_doubles(int64_t count)
{
    double *x = allocate_exact(count, sizeof(double));
    for (int64_t i = 0; i < count; i++)
        x[i] = NAN;
    return x;
}

void test_free_all(void)
{
    for (size_t i = 0; i < buffer_count; i++)
        free(buffers[i]);
    free(buffers);
    buffers = NULL;
    buffer_count = buffer_capacity = 0;
}

void test_fill_normal(test_rng *rng, float *x, int64_t count, float scale)
{
    for (int64_t i = 0; i < count; i++)
        x[i] = scale * (float)test_rng_normal(rng);
}

float *test_random_hessian(test_rng *rng, int64_t in, int64_t tokens)
{
    float *x = test_floats(tokens * in);
    test_fill_normal(rng, x, tokens * in, 1.0f);
    float *h = test_floats(in * in);
    for (int64_t i = 0; i < in; i++) {
        for (int64_t j = 0; j <= i; j++) {
            double sum = 0.0;
            for (int64_t t = 0; t < tokens; t++)
                sum += (double)x[t * in + i] * x[t * in + j];
            h[i * in + j] = h[j * in + i] = (float)(2.0 * sum / (double)tokens);
        }
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* Reference quantizer and result checks                                     */
/* ------------------------------------------------------------------------ */

void ref_find_params(int bits, int sym, const float *x, int64_t count,
                     int64_t stride, float *scale, float *zero)
{
    float maxq = (float)test_maxq(bits);
    float xmin = 0.0f;
    float xmax = 0.0f;
    for (int64_t j = 0; j < count; j++) {
        xmin = fminf(xmin, x[j * stride]);
        xmax = fmaxf(xmax, x[j * stride]);
    }
    if (sym) {
        xmax = fmaxf(fabsf(xmin), xmax);
        xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    *scale = (xmax - xmin) / maxq;
    *zero = sym ? (maxq + 1.0f) / 2.0f : rintf(-xmin / *scale);
}

uint8_t ref_quantize(int bits, float x, float scale, float zero)
{
    float code = rintf(x / scale) + zero;
    code = fminf(fmaxf(code, 0.0f), (float)test_maxq(bits));
    return (uint8_t)code;
}

int ref_near_tie(float x, float scale, float margin)
{
    double t = (double)x / (double)scale;
    return fabs(t - floor(t) - 0.5) < margin;
}

int all_finite(const float *x, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

void check_quantized_layer(const char *label, int bits, int64_t out,
                           int64_t in, int64_t groups, const uint8_t *codes,
                           const float *scales, const float *zeros,
                           const int32_t *g_idx, const float *dequant)
{
    const int maxq = test_maxq(bits);
    long bad_codes = 0, bad_params = 0, bad_dequant = 0, bad_g_idx = 0;

    for (int64_t c = 0; c < in; c++)
        if (g_idx[c] < 0 || g_idx[c] >= groups)
            bad_g_idx++;
    CHECK(bad_g_idx == 0, "%s: %ld g_idx values outside [0, %lld)", label,
          bad_g_idx, (long long)groups);
    if (bad_g_idx != 0)
        return;

    for (int64_t r = 0; r < out; r++) {
        for (int64_t g = 0; g < groups; g++) {
            float s = scales[r * groups + g];
            float z = zeros[r * groups + g];
            if (!(isfinite(s) && s > 0.0f && z == rintf(z) && z >= 0.0f &&
                  z <= (float)maxq)) {
                if (bad_params++ == 0)
                    fprintf(stderr, "    %s: row %lld group %lld: scale %g zero %g\n",
                            label, (long long)r, (long long)g, s, z);
            }
        }
        for (int64_t c = 0; c < in; c++) {
            uint8_t code = codes[r * in + c];
            if (code > maxq) {
                bad_codes++;
                continue;
            }
            int64_t g = g_idx[c];
            float expected = scales[r * groups + g] *
                             ((float)code - zeros[r * groups + g]);
            if (dequant != NULL && dequant[r * in + c] != expected) {
                if (bad_dequant++ == 0)
                    fprintf(stderr, "    %s: dequant[%lld, %lld] = %.9g, "
                            "scale * (code - zero) = %.9g\n", label,
                            (long long)r, (long long)c, dequant[r * in + c],
                            expected);
            }
        }
    }
    CHECK(bad_params == 0, "%s: %ld (scale, zero) pairs are not finite, "
          "positive and integral in [0, %d]", label, bad_params, maxq);
    CHECK(bad_codes == 0, "%s: %ld codes above maxq = %d", label, bad_codes,
          maxq);
    CHECK(bad_dequant == 0, "%s: %ld dequantized values differ from "
          "scale * (code - zero)", label, bad_dequant);

    if (dequant == NULL || bad_codes != 0 || out * in == 0)
        return;
    float *again = malloc((size_t)(out * in > 0 ? out * in : 1) * sizeof(float));
    if (again == NULL)
        return;
    astro_status status = astro_dequantize(codes, scales, zeros, g_idx, out,
                                           in, groups, again);
    CHECK(status == ASTRO_STATUS_OK, "%s: astro_dequantize returned %d (%s)",
          label, (int)status, astro_status_message(status));
    if (status == ASTRO_STATUS_OK) {
        long differ = 0;
        for (int64_t i = 0; i < out * in; i++)
            differ += again[i] != dequant[i];
        CHECK(differ == 0, "%s: astro_dequantize differs from the dequantized "
              "output in %ld of %lld values", label, differ,
              (long long)(out * in));
    }
    free(again);
}
