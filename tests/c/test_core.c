/*
 * test_core.c - tests of the C core against the contract in csrc/astro.h.
 *
 * tests/c/Makefile builds this file and the core sources in csrc with AddressSanitizer and
 * UndefinedBehaviorSanitizer, so an out-of-bounds access, a leak or
 * undefined arithmetic stops the run even where every checked value is
 * right. The core's allocations go through alloc_hook.c, which lets the
 * tests fail each allocation in turn and count blocks left live.
 *
 * Usage: test_core [--no-fork] [NAME_SUBSTRING ...]
 * No name runs every test. Each test runs in a child process unless
 * --no-fork is given (handy under a debugger).
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc_hook.h"
#include "astro.h"
#include "test_util.h"

static const int ALL_BITS[] = {2, 3, 4, 8};
enum { ALL_BITS_COUNT = sizeof ALL_BITS / sizeof ALL_BITS[0] };

static int64_t groups_of(int64_t in, int64_t group_size)
{
    return group_size > 0 ? (in + group_size - 1) / group_size : 1;
}

/* A dimension too large for the 32-bit BLAS integer. */
static const int64_t TOO_LARGE = (int64_t)INT_MAX + 1;

/* ======================================================================== */
/* Status messages and threads                                               */
/* ======================================================================== */

static void test_status_messages(void)
{
    for (int s = 0; s < ASTRO_STATUS_COUNT_; s++) {
        const char *message = astro_status_message((astro_status)s);
        CHECK(message != NULL && message[0] != '\0',
              "status %d has no message", s);
        for (int t = 0; t < s && message != NULL; t++) {
            const char *other = astro_status_message((astro_status)t);
            CHECK(other == NULL || strcmp(message, other) != 0,
                  "statuses %d and %d share the message \"%s\"", t, s,
                  message);
        }
    }
    const int unknown[] = {ASTRO_STATUS_COUNT_, 1000, -1};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *message = astro_status_message((astro_status)unknown[i]);
        CHECK(message != NULL && message[0] != '\0',
              "unknown status %d must still get a message", unknown[i]);
    }
}

static void test_num_threads(void)
{
    int saved = astro_get_num_threads();
    CHECK(saved >= 1, "default thread count %d", saved);
    astro_set_num_threads(1);
    CHECK(astro_get_num_threads() == 1, "got %d", astro_get_num_threads());
    astro_set_num_threads(2);
    CHECK(astro_get_num_threads() == 2, "got %d", astro_get_num_threads());
    astro_set_num_threads(0);
    CHECK(astro_get_num_threads() >= 1, "set(0) left %d threads",
          astro_get_num_threads());
    astro_set_num_threads(-5);
    CHECK(astro_get_num_threads() >= 1, "set(-5) left %d threads",
          astro_get_num_threads());
    astro_set_num_threads(saved);
}

static void test_params_init(void)
{
    astro_quant_params quant;
    astro_quant_params_init(&quant, 3, 64);
    CHECK(quant.bits == 3 && quant.group_size == 64, "bits %d group %lld",
          quant.bits, (long long)quant.group_size);
    CHECK(quant.sym == 0 && quant.mse == 0, "sym %d mse %d", quant.sym,
          quant.mse);
    CHECK(quant.mse_norm == 2.4f && quant.mse_grid == 100 &&
          quant.mse_max_shrink == 0.8f, "mse defaults %g %d %g",
          quant.mse_norm, quant.mse_grid, quant.mse_max_shrink);

    astro_gptq_params gptq;
    astro_gptq_params_init(&gptq, 4, -1);
    CHECK(gptq.quant.bits == 4 && gptq.quant.group_size == -1,
          "bits %d group %lld", gptq.quant.bits,
          (long long)gptq.quant.group_size);
    CHECK(gptq.block_size == 128, "block_size %lld",
          (long long)gptq.block_size);
    CHECK(gptq.damp == 0.01f && gptq.damp_max >= gptq.damp,
          "damp %g damp_max %g", gptq.damp, gptq.damp_max);
    CHECK(gptq.act_order == 0 && gptq.static_groups == 0,
          "act_order %d static_groups %d", gptq.act_order,
          gptq.static_groups);

    astro_regularize_params reg;
    astro_regularize_params_init(&reg);
    CHECK(reg.max_iterations > 0 && reg.tol >= 0.0 &&
          reg.power_iterations > 0 && reg.beta >= 0.0 &&
          reg.group_size != 0, "regularize defaults: iterations %d tol %g "
          "power %d beta %g group %lld", reg.max_iterations, reg.tol,
          reg.power_iterations, reg.beta, (long long)reg.group_size);
}

/* ======================================================================== */
/* Hessian                                                                   */
/* ======================================================================== */

/* H = (2 / n) X^T X over the rows of several strided batches, in double. */
static void ref_hessian(const float *const *batches, const int64_t *tokens,
                        int batch_count, int64_t in, int64_t stride,
                        double *h)
{
    int64_t n = 0;
    memset(h, 0, (size_t)(in * in) * sizeof *h);
    for (int b = 0; b < batch_count; b++) {
        n += tokens[b];
        for (int64_t t = 0; t < tokens[b]; t++)
            for (int64_t i = 0; i < in; i++)
                for (int64_t j = 0; j < in; j++)
                    h[i * in + j] += (double)batches[b][t * stride + i] *
                                     batches[b][t * stride + j];
    }
    for (int64_t i = 0; i < in * in; i++)
        h[i] *= 2.0 / (double)n;
}

static void test_hessian_streaming(void)
{
    test_rng rng;
    test_rng_seed(&rng, 11);
    const int64_t in = 13, stride = in + 3;
    const int64_t tokens[] = {5, 0, 7, 1};
    enum { BATCHES = 4 };
    const float *batches[BATCHES];

    /* Padding columns hold NaN: reading them would poison H. */
    for (int b = 0; b < BATCHES; b++) {
        float *x = test_floats(tokens[b] * stride);
        for (int64_t t = 0; t < tokens[b]; t++)
            test_fill_normal(&rng, x + t * stride, in, 1.0f);
        batches[b] = x;
    }

    /* Upper triangle starts at 0; the lower one holds a sentinel that
     * astro_hessian_update must leave alone. */
    float *h = test_floats(in * in);
    for (int64_t i = 0; i < in; i++)
        for (int64_t j = 0; j < in; j++)
            h[i * in + j] = j >= i ? 0.0f : -7.0f;

    int64_t num_samples = 0;
    for (int b = 0; b < BATCHES; b++)
        CHECK_STATUS(astro_hessian_update(h, in, &num_samples, batches[b],
                                          tokens[b], stride),
                     ASTRO_STATUS_OK);
    CHECK(num_samples == 13, "num_samples %lld", (long long)num_samples);

    double *ref = test_doubles(in * in);
    ref_hessian(batches, tokens, BATCHES, in, stride, ref);
    double largest = 0.0;
    for (int64_t i = 0; i < in * in; i++)
        largest = fmax(largest, fabs(ref[i]));

    long wrong_upper = 0, touched_lower = 0;
    for (int64_t i = 0; i < in; i++) {
        for (int64_t j = 0; j < in; j++) {
            if (j >= i)
                wrong_upper += !(fabs(h[i * in + j] - ref[i * in + j]) <=
                                 1e-5 * largest);
            else
                touched_lower += h[i * in + j] != -7.0f;
        }
    }
    CHECK(wrong_upper == 0, "%ld upper entries differ from (2/n) X^T X",
          wrong_upper);
    CHECK(touched_lower == 0, "%ld lower entries were written",
          touched_lower);

    CHECK_STATUS(astro_hessian_symmetrize(h, in), ASTRO_STATUS_OK);
    long asymmetric = 0;
    for (int64_t i = 0; i < in; i++)
        for (int64_t j = 0; j < in; j++)
            asymmetric += h[i * in + j] != h[j * in + i];
    CHECK(asymmetric == 0, "%ld entries differ from their transpose",
          asymmetric);

    /* tokens == 0 leaves both h and the count unchanged. */
    float before = h[1];
    CHECK_STATUS(astro_hessian_update(h, in, &num_samples, batches[0], 0,
                                      stride), ASTRO_STATUS_OK);
    CHECK(num_samples == 13 && h[1] == before, "an empty batch changed H");
}

static void test_hessian_invalid(void)
{
    float h[4] = {0};
    float x[4] = {1, 2, 3, 4};
    int64_t n = 0;
    CHECK_STATUS(astro_hessian_update(NULL, 2, &n, x, 2, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_update(h, 2, NULL, x, 2, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_update(h, 2, &n, NULL, 2, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_update(h, -1, &n, x, 2, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_update(h, 2, &n, x, -1, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_update(h, 2, &n, x, 2, 1),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_update(h, TOO_LARGE, &n, x, 1, TOO_LARGE),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    n = -3;
    CHECK_STATUS(astro_hessian_update(h, 2, &n, x, 2, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK(n == -3, "a rejected call changed num_samples to %lld",
          (long long)n);
    CHECK_STATUS(astro_hessian_symmetrize(NULL, 2),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_hessian_symmetrize(h, -1),
                 ASTRO_STATUS_INVALID_ARGUMENT);

    /* in == 0 has nothing to compute: either answer is fine, no crash. */
    n = 0;
    astro_status status = astro_hessian_update(h, 0, &n, x, 2, 0);
    CHECK(status == ASTRO_STATUS_OK ||
          status == ASTRO_STATUS_INVALID_ARGUMENT, "in = 0: status %d",
          (int)status);
}

/* ======================================================================== */
/* Quantizer                                                                 */
/* ======================================================================== */

/*
 * Compares scale and zero with the reference rule. Zero may differ by one
 * only where -xmin / scale is within float rounding of a tie.
 */
static void check_params_match(const char *label, int bits, int sym,
                               const float *x, int64_t count, int64_t stride,
                               float scale, float zero)
{
    float ref_scale, ref_zero;
    ref_find_params(bits, sym, x, count, stride, &ref_scale, &ref_zero);
    CHECK(fabsf(scale - ref_scale) <= 1e-6f * ref_scale,
          "%s: scale %.9g, reference %.9g", label, scale, ref_scale);
    float xmin = 0.0f;
    for (int64_t j = 0; j < count; j++)
        xmin = fminf(xmin, x[j * stride]);
    int tie = !sym && ref_near_tie(-xmin, ref_scale, 1e-4f);
    CHECK(zero == ref_zero || (tie && fabsf(zero - ref_zero) == 1.0f),
          "%s: zero %g, reference %g", label, zero, ref_zero);
}

/* Rows of the transposed layout used by the quantizer tests. */
enum {
    ROW_RANDOM,
    ROW_ZERO,
    ROW_CONSTANT,
    ROW_NEGATIVE,
    ROW_OUTLIER,
    ROW_POSITIVE,
    ROW_KINDS
};

static void fill_row_kind(test_rng *rng, int kind, float *x, int64_t count,
                          int64_t stride)
{
    for (int64_t j = 0; j < count; j++) {
        float v = (float)test_rng_normal(rng);
        switch (kind) {
        case ROW_ZERO: v = 0.0f; break;
        case ROW_CONSTANT: v = 0.3f; break;
        case ROW_NEGATIVE: v = -fabsf(v) - 0.01f; break;
        case ROW_OUTLIER: v = j == count / 2 ? 1000.0f * v : v; break;
        case ROW_POSITIVE: v = fabsf(v) + 0.01f; break;
        default: break;
        }
        x[j * stride] = v;
    }
}

static void test_quant_params_reference(void)
{
    test_rng rng;
    test_rng_seed(&rng, 21);
    const int64_t rows = ROW_KINDS, stride = rows + 2;
    const int64_t counts[] = {1, 2, 9, 128};

    for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
        const int64_t count = counts[ci];
        float *x = test_floats(count * stride);
        for (int kind = 0; kind < ROW_KINDS; kind++)
            fill_row_kind(&rng, kind, x + kind, count, stride);

        for (int b = 0; b < ALL_BITS_COUNT; b++) {
            for (int sym = 0; sym <= 1; sym++) {
                const int bits = ALL_BITS[b];
                astro_quant_params params;
                astro_quant_params_init(&params, bits, -1);
                params.sym = sym;
                float scale[ROW_KINDS], zero[ROW_KINDS];
                CHECK_STATUS(astro_quant_find_params(&params, x, count, rows,
                                                     stride, scale, zero),
                             ASTRO_STATUS_OK);
                char label[96];
                for (int r = 0; r < rows; r++) {
                    snprintf(label, sizeof label,
                             "count %lld bits %d sym %d row kind %d",
                             (long long)count, bits, sym, r);
                    check_params_match(label, bits, sym, x + r, count,
                                       stride, scale[r], zero[r]);
                }

                /* Quantize every line and compare with the formula. */
                uint8_t code[ROW_KINDS];
                float q[ROW_KINDS];
                long wrong = 0, far = 0;
                for (int64_t j = 0; j < count; j++) {
                    const float *line = x + j * stride;
                    astro_quant_line(bits, line, scale, zero, rows, code, q);
                    for (int r = 0; r < rows; r++) {
                        uint8_t expected =
                            ref_quantize(bits, line[r], scale[r], zero[r]);
                        if (code[r] != expected &&
                            !ref_near_tie(line[r], scale[r], 1e-4f))
                            wrong++;
                        if (q[r] != scale[r] * ((float)code[r] - zero[r]))
                            wrong++;
                        if (!(fabsf(q[r] - line[r]) <=
                              0.5001f * scale[r] + 1e-6f * fabsf(line[r])))
                            far++;
                    }
                    uint8_t code_only[ROW_KINDS];
                    astro_quant_line(bits, line, scale, zero, rows, code_only,
                                     NULL);
                    astro_quant_line(bits, line, scale, zero, rows, NULL,
                                     NULL);
                    wrong += memcmp(code_only, code, sizeof code) != 0;
                }
                CHECK(wrong == 0, "count %lld bits %d sym %d: %ld codes or "
                      "values differ from clamp(rint(x / s) + z)",
                      (long long)count, bits, sym, wrong);
                CHECK(far == 0, "count %lld bits %d sym %d: %ld values are "
                      "more than scale / 2 from their input",
                      (long long)count, bits, sym, far);
            }
        }
    }
}

static void check_degenerate_cases(const float (*cases)[4], int64_t case_count);

/* Degenerate groups: zero, denormal, tiny and large values. */
static void test_quant_degenerate_groups(void)
{
    const float min_denormal = 0x1p-149f;
    const float cases[][4] = {
        {1e-40f, 1e-40f, 1e-40f, 1e-40f},
        {min_denormal, 0.0f, min_denormal, 0.0f},
        {-min_denormal, -min_denormal, -min_denormal, -min_denormal},
        {FLT_MIN, -FLT_MIN, 0.0f, FLT_MIN},
        {0.0f, -0.0f, 0.0f, -0.0f},
        {1e30f, -1e30f, 3.0f, 0.0f},
    };
    check_degenerate_cases(cases, sizeof cases / sizeof cases[0]);
}

/*
 * Ranges near the float limit: [0, FLT_MAX] and the symmetric range around
 * it are wider than FLT_MAX / 2. They must give NON_FINITE or a finite
 * scale, never an infinite one.
 */
static void test_quant_range_overflow(void)
{
    const float cases[][4] = {
        {FLT_MAX, 1.0f, 0.5f, 0.0f},
        {FLT_MAX, -FLT_MAX, 0.0f, 1.0f},
    };
    check_degenerate_cases(cases, sizeof cases / sizeof cases[0]);
}

static void check_degenerate_cases(const float (*cases)[4], int64_t case_count)
{
    const int64_t count = 4;

    for (int mse = 0; mse <= 1; mse++) {
        for (int b = 0; b < ALL_BITS_COUNT; b++) {
            for (int sym = 0; sym <= 1; sym++) {
                const int bits = ALL_BITS[b];
                astro_quant_params params;
                astro_quant_params_init(&params, bits, -1);
                params.sym = sym;
                params.mse = mse;
                for (int64_t k = 0; k < case_count; k++) {
                    float scale = NAN, zero = NAN;
                    astro_status status = astro_quant_find_params(
                        &params, cases[k], count, 1, 1, &scale, &zero);
                    char label[96];
                    snprintf(label, sizeof label,
                             "case %lld bits %d sym %d mse %d", (long long)k,
                             bits, sym, mse);
                    /* Only a range whose width overflows float may fail. */
                    double low = 0.0, high = 0.0;
                    for (int64_t j = 0; j < count; j++) {
                        low = fmin(low, cases[k][j]);
                        high = fmax(high, cases[k][j]);
                    }
                    if (sym)
                        low = -(high = fmax(high, -low));
                                    /* The core rejects ranges wider than FLT_MAX / 2, where
                     * decoding the ends could round past FLT_MAX. */
                    int overflows = high - low > FLT_MAX / 2.0;
                    if (status != ASTRO_STATUS_OK) {
                        CHECK(status == ASTRO_STATUS_NON_FINITE && overflows,
                              "%s: status %d (%s)", label, (int)status,
                              astro_status_message(status));
                        continue;
                    }
                    CHECK(isfinite(scale) && scale > 0.0f,
                          "%s: scale %g must be finite and positive", label,
                          scale);
                    CHECK(zero == rintf(zero) && zero >= 0.0f &&
                          zero <= (float)test_maxq(bits),
                          "%s: zero %g", label, zero);
                    int bad_values = 0;
                    uint8_t code = 0;
                    float q = 0.0f;
                    for (int64_t j = 0; j < count && bad_values == 0; j++) {
                        astro_quant_line(bits, &cases[k][j], &scale, &zero,
                                         1, &code, &q);
                        bad_values += !(code <= test_maxq(bits) && isfinite(q));
                    }
                    CHECK(bad_values == 0, "%s: code %d, value %g", label,
                          code, q);
                }
            }
        }
    }
}

static void test_quant_invalid(void)
{
    float x[4] = {1, 2, 3, 4};
    float scale[2], zero[2];
    astro_quant_params params;
    astro_quant_params_init(&params, 4, -1);
    CHECK_STATUS(astro_quant_find_params(NULL, x, 2, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_quant_find_params(&params, NULL, 2, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_quant_find_params(&params, x, 2, 2, 2, NULL, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_quant_find_params(&params, x, 2, 2, 2, scale, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_quant_find_params(&params, x, -1, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_quant_find_params(&params, x, 2, -1, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_quant_find_params(&params, x, 2, 2, 1, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);

    const int bad_bits[] = {-1, 0, 1, 9, 32};
    for (size_t i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
        astro_quant_params bad = params;
        bad.bits = bad_bits[i];
        CHECK_STATUS(astro_quant_find_params(&bad, x, 2, 2, 2, scale, zero),
                     ASTRO_STATUS_INVALID_ARGUMENT);
    }

    astro_quant_params bad = params;
    bad.mse = 1;
    bad.mse_grid = 0;
    CHECK_STATUS(astro_quant_find_params(&bad, x, 2, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.mse = 1;
    bad.mse_norm = NAN;
    CHECK_STATUS(astro_quant_find_params(&bad, x, 2, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.mse = 1;
    bad.mse_max_shrink = 1.5f;
    CHECK_STATUS(astro_quant_find_params(&bad, x, 2, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.mse = 1;
    bad.mse_max_shrink = -0.5f;
    CHECK_STATUS(astro_quant_find_params(&bad, x, 2, 2, 2, scale, zero),
                 ASTRO_STATUS_INVALID_ARGUMENT);
}

/* ======================================================================== */
/* RTN                                                                       */
/* ======================================================================== */

static void ref_rtn(int bits, int sym, int64_t group_size, const float *w,
                    int64_t out, int64_t in, uint8_t *codes, int *tie)
{
    int64_t g = group_size > 0 ? group_size : in;
    for (int64_t r = 0; r < out; r++) {
        for (int64_t start = 0; start < in; start += g) {
            int64_t count = start + g <= in ? g : in - start;
            float scale, zero;
            ref_find_params(bits, sym, w + r * in + start, count, 1, &scale,
                            &zero);
            for (int64_t c = start; c < start + count; c++) {
                codes[r * in + c] = ref_quantize(bits, w[r * in + c], scale,
                                                 zero);
                tie[r * in + c] = ref_near_tie(w[r * in + c], scale, 1e-4f);
            }
        }
    }
}

static void test_rtn_reference(void)
{
    test_rng rng;
    test_rng_seed(&rng, 31);
    const int64_t out = ROW_KINDS, in = 33;
    const int64_t group_sizes[] = {-1, 1, 8, 32, 33};
    float *w = test_floats(out * in);
    for (int kind = 0; kind < ROW_KINDS; kind++)
        fill_row_kind(&rng, kind, w + kind * in, in, 1);

    for (size_t gi = 0; gi < sizeof group_sizes / sizeof group_sizes[0]; gi++) {
        for (int b = 0; b < ALL_BITS_COUNT; b++) {
            for (int sym = 0; sym <= 1; sym++) {
                const int bits = ALL_BITS[b];
                const int64_t g = group_sizes[gi];
                const int64_t groups = groups_of(in, g);
                astro_quant_params params;
                astro_quant_params_init(&params, bits, g);
                params.sym = sym;

                uint8_t *codes = test_bytes(out * in);
                float *scales = test_floats(out * groups);
                float *zeros = test_floats(out * groups);
                float *dequant = test_floats(out * in);
                CHECK_STATUS(astro_rtn(&params, w, out, in, codes, scales,
                                       zeros, dequant), ASTRO_STATUS_OK);

                char label[64];
                snprintf(label, sizeof label, "rtn bits %d sym %d g %lld",
                         bits, sym, (long long)g);
                int32_t *g_idx = test_ints(in);
                for (int64_t c = 0; c < in; c++)
                    g_idx[c] = (int32_t)(g > 0 ? c / g : 0);
                check_quantized_layer(label, bits, out, in, groups, codes,
                                      scales, zeros, g_idx, dequant);

                uint8_t *expected = test_bytes(out * in);
                int *tie = malloc((size_t)(out * in) * sizeof *tie);
                ref_rtn(bits, sym, g, w, out, in, expected, tie);
                long wrong = 0;
                for (int64_t i = 0; i < out * in; i++)
                    wrong += codes[i] != expected[i] && !tie[i];
                free(tie);
                CHECK(wrong == 0, "%s: %ld codes differ from the reference",
                      label, wrong);

                uint8_t *codes_again = test_bytes(out * in);
                CHECK_STATUS(astro_rtn(&params, w, out, in, codes_again,
                                       scales, zeros, NULL),
                             ASTRO_STATUS_OK);
                CHECK(memcmp(codes, codes_again, (size_t)(out * in)) == 0,
                      "%s: codes change when dequant is NULL", label);
            }
        }
    }
}

static void test_rtn_invalid(void)
{
    float w[6] = {1, 2, 3, 4, 5, 6};
    uint8_t codes[6];
    float scales[6], zeros[6], dequant[6];
    astro_quant_params params;
    astro_quant_params_init(&params, 4, 2);
    CHECK_STATUS(astro_rtn(NULL, w, 2, 3, codes, scales, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_rtn(&params, NULL, 2, 3, codes, scales, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_rtn(&params, w, 2, 3, NULL, scales, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_rtn(&params, w, 2, 3, codes, NULL, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_rtn(&params, w, 2, 3, codes, scales, NULL, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_rtn(&params, w, -2, 3, codes, scales, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_rtn(&params, w, 2, -3, codes, scales, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    const int64_t bad_groups[] = {0, -2, INT64_MIN};
    for (size_t i = 0; i < sizeof bad_groups / sizeof bad_groups[0]; i++) {
        astro_quant_params bad = params;
        bad.group_size = bad_groups[i];
        CHECK_STATUS(astro_rtn(&bad, w, 2, 3, codes, scales, zeros, dequant),
                     ASTRO_STATUS_INVALID_ARGUMENT);
    }
    astro_quant_params bad = params;
    bad.bits = 9;
    CHECK_STATUS(astro_rtn(&bad, w, 2, 3, codes, scales, zeros, dequant),
                 ASTRO_STATUS_INVALID_ARGUMENT);

    /* A group wider than the row: rejected, or one group per row. */
    bad = params;
    bad.group_size = 4;
    astro_status wide = astro_rtn(&bad, w, 2, 3, codes, scales, zeros, dequant);
    CHECK(wide == ASTRO_STATUS_OK || wide == ASTRO_STATUS_INVALID_ARGUMENT,
          "group_size 4 > in 3: status %d", (int)wide);
    if (wide == ASTRO_STATUS_OK) {
        int32_t g_idx[3] = {0, 0, 0};
        check_quantized_layer("group_size > in", 4, 2, 3, 1, codes, scales,
                              zeros, g_idx, dequant);
    }
}

/* NaN or Inf weights are an error, not undefined float-to-int casts. */
static void test_rtn_non_finite_weights(void)
{
    const float specials[] = {NAN, INFINITY, -INFINITY};
    uint8_t codes[6];
    float scales[2], zeros[2], dequant[6];
    astro_quant_params params;
    astro_quant_params_init(&params, 4, -1);
    for (int k = 0; k < 3; k++) {
        float w[6] = {1, 2, 3, 4, 5, 6};
        w[1] = specials[k];
        astro_status status = astro_rtn(&params, w, 2, 3, codes, scales,
                                        zeros, dequant);
        CHECK(status == ASTRO_STATUS_NON_FINITE ||
              status == ASTRO_STATUS_INVALID_ARGUMENT,
              "weight %g: status %d (%s), expected NON_FINITE or "
              "INVALID_ARGUMENT", specials[k], (int)status,
              astro_status_message(status));
    }
}

/* ======================================================================== */
/* Packing                                                                   */
/* ======================================================================== */

/* Bit `bit` of a little-endian stream stored in column `column` of words. */
static unsigned stream_bit(const int32_t *words, int64_t columns,
                           int64_t column, int64_t bit)
{
    uint32_t word = (uint32_t)words[(bit / 32) * columns + column];
    return (word >> (bit % 32)) & 1u;
}

static void test_pack_rows_roundtrip(void)
{
    test_rng rng;
    test_rng_seed(&rng, 41);
    const int64_t ins[] = {1, 2, 10, 11, 21, 22, 31, 32, 33, 64, 96, 97};
    const int64_t outs[] = {1, 3, 8};

    for (int b = 0; b < ALL_BITS_COUNT; b++) {
        const int bits = ALL_BITS[b];
        for (size_t ii = 0; ii < sizeof ins / sizeof ins[0]; ii++) {
            for (size_t oi = 0; oi < sizeof outs / sizeof outs[0]; oi++) {
                const int64_t in = ins[ii], out = outs[oi];
                const int64_t words = (in * bits + 31) / 32;
                uint8_t *codes = test_bytes(out * in);
                for (int64_t i = 0; i < out * in; i++)
                    codes[i] = (uint8_t)(i % 5 == 0 ? test_maxq(bits)
                                         : test_rng_below(&rng, test_maxq(bits) + 1));
                int32_t *qweight = test_ints(words * out);
                CHECK_STATUS(astro_pack_rows(codes, out, in, bits, qweight),
                             ASTRO_STATUS_OK);

                /* Every bit of every code sits where the stream puts it,
                 * and the bits past the last code are zero. */
                long wrong = 0;
                for (int64_t r = 0; r < out; r++) {
                    for (int64_t c = 0; c < in; c++)
                        for (int k = 0; k < bits; k++)
                            wrong += stream_bit(qweight, out, r, c * bits + k) !=
                                     ((codes[r * in + c] >> k) & 1u);
                    for (int64_t bit = in * bits; bit < words * 32; bit++)
                        wrong += stream_bit(qweight, out, r, bit) != 0;
                }
                CHECK(wrong == 0, "bits %d in %lld out %lld: %ld packed bits "
                      "are wrong", bits, (long long)in, (long long)out, wrong);

                uint8_t *back = test_bytes(out * in);
                CHECK_STATUS(astro_unpack_rows(qweight, out, in, bits, back),
                             ASTRO_STATUS_OK);
                CHECK(memcmp(back, codes, (size_t)(out * in)) == 0,
                      "bits %d in %lld out %lld: unpack(pack(codes)) differs",
                      bits, (long long)in, (long long)out);
            }
        }
    }

    /* 3 bits: code 10 occupies bits 30, 31 of word 0 and bit 0 of word 1. */
    uint8_t codes[11] = {0};
    codes[10] = 7;
    int32_t qweight[2] = {0, 0};
    CHECK_STATUS(astro_pack_rows(codes, 1, 11, 3, qweight), ASTRO_STATUS_OK);
    CHECK((uint32_t)qweight[0] == 0xC0000000u && qweight[1] == 1,
          "3-bit code crossing a word: words %08x %08x",
          (unsigned)qweight[0], (unsigned)qweight[1]);
}

static void test_pack_rows_invalid(void)
{
    uint8_t codes[8] = {0};
    int32_t qweight[8] = {0};
    const int bad_bits[] = {0, 1, 9, 33};
    for (size_t i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
        CHECK_STATUS(astro_pack_rows(codes, 1, 8, bad_bits[i], qweight),
                     ASTRO_STATUS_INVALID_ARGUMENT);
        CHECK_STATUS(astro_unpack_rows(qweight, 1, 8, bad_bits[i], codes),
                     ASTRO_STATUS_INVALID_ARGUMENT);
    }
    CHECK_STATUS(astro_pack_rows(NULL, 1, 8, 4, qweight),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_pack_rows(codes, 1, 8, 4, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_pack_rows(codes, -1, 8, 4, qweight),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_unpack_rows(NULL, 1, 8, 4, codes),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_unpack_rows(qweight, 1, -8, 4, codes),
                 ASTRO_STATUS_INVALID_ARGUMENT);

    /* A code above maxq is either rejected or masked: it must never
     * spill into its neighbours' bits. */
    uint8_t wide[4] = {1, 0xFF, 2, 3};
    int32_t packed[1] = {0};
    astro_status status = astro_pack_rows(wide, 1, 4, 3, packed);
    CHECK(status == ASTRO_STATUS_OK || status == ASTRO_STATUS_INVALID_ARGUMENT,
          "status %d", (int)status);
    if (status == ASTRO_STATUS_OK) {
        uint8_t back[4];
        CHECK_STATUS(astro_unpack_rows(packed, 1, 4, 3, back), ASTRO_STATUS_OK);
        CHECK(back[0] == 1 && back[2] == 2 && back[3] == 3,
              "code 255 at 3 bits corrupted its neighbours: %d %d %d",
              back[0], back[2], back[3]);
    }
}

static void test_pack_zeros_roundtrip(void)
{
    test_rng rng;
    test_rng_seed(&rng, 51);
    const int64_t outs[] = {1, 5, 10, 11, 32, 33};
    const int64_t groups = 3;

    for (int b = 0; b < ALL_BITS_COUNT; b++) {
        for (size_t oi = 0; oi < sizeof outs / sizeof outs[0]; oi++) {
            for (int offset = 0; offset <= 1; offset++) {
                const int bits = ALL_BITS[b];
                const int64_t out = outs[oi];
                const int64_t words = (out * bits + 31) / 32;
                float *zeros = test_floats(groups * out);
                for (int64_t i = 0; i < groups * out; i++)
                    zeros[i] = (float)(i % 4 == 0 ? 0
                                       : test_rng_below(&rng, test_maxq(bits) + 1));
                int32_t *qzeros = test_ints(groups * words);
                CHECK_STATUS(astro_pack_zeros(zeros, groups, out, bits, offset,
                                              qzeros), ASTRO_STATUS_OK);

                /* Stored value: (zero - offset) mod 2^bits, low bits first
                 * along the output dimension of each group's row. */
                long wrong = 0;
                for (int64_t g = 0; g < groups; g++) {
                    for (int64_t r = 0; r < out; r++) {
                        unsigned stored = (unsigned)((int)zeros[g * out + r] - offset) &
                                          (unsigned)test_maxq(bits);
                        for (int k = 0; k < bits; k++) {
                            int64_t bit = r * bits + k;
                            unsigned got = ((uint32_t)qzeros[g * words + bit / 32] >>
                                            (bit % 32)) & 1u;
                            wrong += got != ((stored >> k) & 1u);
                        }
                    }
                }
                CHECK(wrong == 0, "bits %d out %lld offset %d: %ld zero bits "
                      "are wrong", bits, (long long)out, offset, wrong);

                float *back = test_floats(groups * out);
                CHECK_STATUS(astro_unpack_zeros(qzeros, groups, out, bits,
                                                offset, back), ASTRO_STATUS_OK);
                long differ = 0;
                for (int64_t i = 0; i < groups * out; i++)
                    differ += back[i] != zeros[i];
                CHECK(differ == 0, "bits %d out %lld offset %d: %ld zeros "
                      "differ after a round trip", bits, (long long)out,
                      offset, differ);
            }
        }
    }
    float zeros[2] = {1, 2};
    int32_t qzeros[2];
    CHECK_STATUS(astro_pack_zeros(NULL, 1, 2, 4, 1, qzeros),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_pack_zeros(zeros, 1, 2, 1, 1, qzeros),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_pack_zeros(zeros, -1, 2, 4, 1, qzeros),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_unpack_zeros(qzeros, 1, 2, 9, 1, zeros),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_unpack_zeros(qzeros, 1, 2, 4, 1, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
}

static void test_dequantize(void)
{
    test_rng rng;
    test_rng_seed(&rng, 61);
    const int64_t out = 3, in = 10, groups = 4;
    uint8_t *codes = test_bytes(out * in);
    float *scales = test_floats(out * groups);
    float *zeros = test_floats(out * groups);
    int32_t *g_idx = test_ints(in);
    for (int64_t i = 0; i < out * in; i++)
        codes[i] = (uint8_t)test_rng_below(&rng, 16);
    for (int64_t i = 0; i < out * groups; i++) {
        scales[i] = 0.01f + (float)test_rng_uniform(&rng);
        zeros[i] = (float)test_rng_below(&rng, 16);
    }
    for (int64_t c = 0; c < in; c++)
        g_idx[c] = (int32_t)test_rng_below(&rng, groups);

    float *w = test_floats(out * in);
    CHECK_STATUS(astro_dequantize(codes, scales, zeros, g_idx, out, in, groups,
                                  w), ASTRO_STATUS_OK);
    long wrong = 0;
    for (int64_t r = 0; r < out; r++)
        for (int64_t c = 0; c < in; c++) {
            int64_t g = g_idx[c];
            wrong += w[r * in + c] != scales[r * groups + g] *
                                          ((float)codes[r * in + c] -
                                           zeros[r * groups + g]);
        }
    CHECK(wrong == 0, "%ld values differ from scale * (code - zero)", wrong);

    /* g_idx comes from checkpoints: an index outside [0, groups) must be
     * rejected, not read past the end of scales. */
    const int32_t bad[] = {-1, (int32_t)groups, INT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t saved = g_idx[7];
        g_idx[7] = bad[i];
        CHECK_STATUS(astro_dequantize(codes, scales, zeros, g_idx, out, in,
                                      groups, w),
                     ASTRO_STATUS_INVALID_ARGUMENT);
        g_idx[7] = saved;
    }
    CHECK_STATUS(astro_dequantize(codes, scales, zeros, g_idx, out, in, 0, w),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_dequantize(NULL, scales, zeros, g_idx, out, in, groups,
                                  w), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_dequantize(codes, scales, zeros, NULL, out, in, groups,
                                  w), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_dequantize(codes, scales, zeros, g_idx, -1, in, groups,
                                  w), ASTRO_STATUS_INVALID_ARGUMENT);
}

/* ======================================================================== */
/* GPTQ                                                                      */
/* ======================================================================== */

/* Outputs of one astro_gptq() call, allocated for out x in. */
typedef struct gptq_result {
    int64_t out, in, groups;
    uint8_t *codes;
    float *scales, *zeros, *dequant;
    int32_t *g_idx;
    astro_gptq_stats stats;
    astro_status status;
} gptq_result;

static void gptq_result_alloc(gptq_result *result, int64_t out, int64_t in,
                              int64_t group_size)
{
    result->out = out;
    result->in = in;
    result->groups = groups_of(in, group_size);
    result->codes = test_bytes(out * in);
    result->scales = test_floats(out * result->groups);
    result->zeros = test_floats(out * result->groups);
    result->dequant = test_floats(out * in);
    result->g_idx = test_ints(in);
    memset(&result->stats, 0xAB, sizeof result->stats);
}

static void run_gptq(const astro_gptq_params *params, const float *w,
                     const float *h, int64_t out, int64_t in,
                     gptq_result *result, const astro_cancel *cancel)
{
    gptq_result_alloc(result, out, in, params->quant.group_size);
    result->status = astro_gptq(params, w, h, out, in, result->codes,
                                result->scales, result->zeros, result->g_idx,
                                result->dequant, &result->stats, cancel);
}

/* Checks the invariants of a successful GPTQ result. */
static void check_gptq_result(const char *label,
                              const astro_gptq_params *params,
                              const gptq_result *result)
{
    CHECK(result->status == ASTRO_STATUS_OK, "%s: status %d (%s)", label,
          (int)result->status, astro_status_message(result->status));
    if (result->status != ASTRO_STATUS_OK)
        return;
    check_quantized_layer(label, params->quant.bits, result->out, result->in,
                          result->groups, result->codes, result->scales,
                          result->zeros, result->g_idx, result->dequant);
    CHECK(all_finite(result->dequant, result->out * result->in),
          "%s: dequantized weights are not finite", label);
    CHECK(isfinite(result->stats.loss) && result->stats.loss >= 0.0,
          "%s: loss %g", label, result->stats.loss);
    CHECK(result->stats.rtn_fallback ||
          (result->stats.damp_used >= params->damp &&
           result->stats.damp_used <= params->damp_max * (1 + 1e-6)),
          "%s: damp_used %g outside [damp %g, damp_max %g]", label,
          result->stats.damp_used, params->damp, params->damp_max);
    if (!params->act_order || params->static_groups) {
        long wrong = 0;
        for (int64_t c = 0; c < result->in; c++)
            wrong += result->g_idx[c] !=
                     (params->quant.group_size > 0
                          ? c / params->quant.group_size : 0);
        CHECK(wrong == 0, "%s: %ld g_idx entries differ from c / group_size",
              label, wrong);
    }
}

static float *diagonal_hessian(int64_t in, const float *diagonal)
{
    float *h = test_floats(in * in);
    for (int64_t i = 0; i < in * in; i++)
        h[i] = 0.0f;
    for (int64_t i = 0; i < in; i++)
        h[i * in + i] = diagonal[i];
    return h;
}

/*
 * With a diagonal H the inverse factor is diagonal, so GPTQ feeds no error
 * forward and must return exactly the RTN result, whatever the options.
 */
static void test_gptq_diagonal_hessian_is_rtn(void)
{
    test_rng rng;
    test_rng_seed(&rng, 71);
    const int64_t out = 6, in = 40;
    const int64_t group_sizes[] = {-1, 16, 20, 40};
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *diagonal = test_floats(in);
    for (int64_t i = 0; i < in; i++)
        diagonal[i] = 2.5f;
    float *h = diagonal_hessian(in, diagonal);

    for (int b = 0; b < ALL_BITS_COUNT; b++) {
        for (size_t gi = 0; gi < sizeof group_sizes / sizeof group_sizes[0]; gi++) {
            for (int variant = 0; variant < 8; variant++) {
                const int bits = ALL_BITS[b];
                const int64_t g = group_sizes[gi];
                astro_gptq_params params;
                astro_gptq_params_init(&params, bits, g);
                params.quant.sym = variant & 1;
                params.act_order = (variant >> 1) & 1;
                params.static_groups = (variant >> 2) & 1;
                params.block_size = 7;

                char label[96];
                snprintf(label, sizeof label,
                         "bits %d g %lld sym %d act_order %d static %d", bits,
                         (long long)g, params.quant.sym, params.act_order,
                         params.static_groups);
                gptq_result result;
                run_gptq(&params, w, h, out, in, &result, NULL);
                check_gptq_result(label, &params, &result);
                if (result.status != ASTRO_STATUS_OK)
                    continue;

                /* Equal diagonal entries: a stable sort keeps the order. */
                long wrong_g_idx = 0;
                for (int64_t c = 0; c < in; c++)
                    wrong_g_idx += result.g_idx[c] != (g > 0 ? c / g : 0);
                CHECK(wrong_g_idx == 0, "%s: act-order over a constant "
                      "diagonal moved %ld columns", label, wrong_g_idx);
                CHECK(result.stats.dead_columns == 0 &&
                      result.stats.rtn_fallback == 0, "%s: dead %lld "
                      "fallback %d", label,
                      (long long)result.stats.dead_columns,
                      result.stats.rtn_fallback);

                uint8_t *codes = test_bytes(out * in);
                float *scales = test_floats(out * result.groups);
                float *zeros = test_floats(out * result.groups);
                float *dequant = test_floats(out * in);
                CHECK_STATUS(astro_rtn(&params.quant, w, out, in, codes,
                                       scales, zeros, dequant),
                             ASTRO_STATUS_OK);
                CHECK(memcmp(codes, result.codes, (size_t)(out * in)) == 0,
                      "%s: codes differ from RTN", label);
                CHECK(memcmp(scales, result.scales,
                             (size_t)(out * result.groups) * sizeof(float)) == 0 &&
                      memcmp(zeros, result.zeros,
                             (size_t)(out * result.groups) * sizeof(float)) == 0,
                      "%s: scales or zeros differ from RTN", label);
            }
        }
    }
}

/*
 * Act-order over a diagonal H with distinct and tied entries: columns go
 * by descending H_ii with ties in input order, and each group's parameters
 * come from the columns g_idx assigns to it.
 */
static void test_gptq_act_order_groups(void)
{
    test_rng rng;
    test_rng_seed(&rng, 81);
    const int64_t out = 4, in = 30, g = 8;
    const int64_t groups = groups_of(in, g);
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *diagonal = test_floats(in);
    for (int64_t i = 0; i < in; i++)
        diagonal[i] = 1.0f + (float)((i * 7) % 5);
    float *h = diagonal_hessian(in, diagonal);

    /* Stable descending order of the diagonal. */
    int64_t order[30];
    int64_t filled = 0;
    for (int level = 5; level >= 1; level--)
        for (int64_t i = 0; i < in; i++)
            if (diagonal[i] == (float)level)
                order[filled++] = i;

    astro_gptq_params params;
    astro_gptq_params_init(&params, 3, g);
    params.act_order = 1;
    gptq_result result;
    run_gptq(&params, w, h, out, in, &result, NULL);
    check_gptq_result("act_order", &params, &result);
    if (result.status != ASTRO_STATUS_OK)
        return;

    long wrong_g_idx = 0, wrong_params = 0;
    for (int64_t k = 0; k < in; k++)
        wrong_g_idx += result.g_idx[order[k]] != k / g;
    CHECK(wrong_g_idx == 0, "%ld columns are in the wrong act-order group",
          wrong_g_idx);

    float *values = test_floats(g);
    for (int64_t r = 0; r < out; r++) {
        for (int64_t group = 0; group < groups; group++) {
            int64_t count = 0;
            for (int64_t k = group * g; k < in && k < (group + 1) * g; k++)
                values[count++] = w[r * in + order[k]];
            float scale, zero;
            ref_find_params(3, 0, values, count, 1, &scale, &zero);
            wrong_params += fabsf(scale - result.scales[r * groups + group]) >
                                1e-6f * scale ||
                            zero != result.zeros[r * groups + group];
        }
    }
    CHECK(wrong_params == 0, "%ld group parameters differ from the "
          "reference over the act-order groups", wrong_params);

    params.static_groups = 1;
    gptq_result static_result;
    run_gptq(&params, w, h, out, in, &static_result, NULL);
    check_gptq_result("act_order + static_groups", &params, &static_result);
}

/* ---- double-precision reference GPTQ (unblocked, no act-order) ---------- */

/* In-place lower Cholesky of a row-major n x n matrix; 0 on success. */
static int ref_cholesky(double *a, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        double d = a[j * n + j];
        for (int64_t k = 0; k < j; k++)
            d -= a[j * n + k] * a[j * n + k];
        if (!(d > 0.0))
            return -1;
        d = sqrt(d);
        a[j * n + j] = d;
        for (int64_t i = j + 1; i < n; i++) {
            double s = a[i * n + j];
            for (int64_t k = 0; k < j; k++)
                s -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = s / d;
        }
        for (int64_t k = j + 1; k < n; k++)
            a[j * n + k] = 0.0;
    }
    return 0;
}

/* U with H^-1 = U^T U (upper triangular), for symmetric positive definite H. */
static int ref_inverse_upper_factor(const double *h, int64_t n, double *u)
{
    double *l = malloc((size_t)(n * n) * sizeof *l);
    double *hinv = malloc((size_t)(n * n) * sizeof *hinv);
    memcpy(l, h, (size_t)(n * n) * sizeof *l);
    int failed = ref_cholesky(l, n);
    if (!failed) {
        /* Y = L^-1 by forward substitution, then H^-1 = Y^T Y. */
        double *y = calloc((size_t)(n * n), sizeof *y);
        for (int64_t col = 0; col < n; col++)
            for (int64_t i = col; i < n; i++) {
                double s = i == col ? 1.0 : 0.0;
                for (int64_t k = col; k < i; k++)
                    s -= l[i * n + k] * y[k * n + col];
                y[i * n + col] = s / l[i * n + i];
            }
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0.0;
                for (int64_t k = 0; k < n; k++)
                    s += y[k * n + i] * y[k * n + j];
                hinv[i * n + j] = s;
            }
        free(y);
        failed = ref_cholesky(hinv, n);
        for (int64_t i = 0; i < n && !failed; i++)
            for (int64_t j = 0; j < n; j++)
                u[i * n + j] = hinv[j * n + i];
    }
    free(l);
    free(hinv);
    return failed;
}

/*
 * GPTQ in double precision, one column at a time. Dynamic group parameters
 * come from the group's weights as they stood when the enclosing block of
 * `block_size` columns began (the within-block updates are not yet in
 * them), which is what the reference implementation and astro_gptq() do.
 */
static void ref_gptq(int bits, int64_t group_size, int64_t block_size,
                     float damp, const float *w, const float *h, int64_t out,
                     int64_t in, uint8_t *codes, double *loss)
{
    double *hd = malloc((size_t)(in * in) * sizeof *hd);
    double *wd = malloc((size_t)(out * in) * sizeof *wd);
    double *u = malloc((size_t)(in * in) * sizeof *u);
    float *column_values = malloc((size_t)in * sizeof *column_values);
    double *block_start = malloc((size_t)in * sizeof *block_start);
    for (int64_t i = 0; i < in * in; i++)
        hd[i] = h[i];
    for (int64_t i = 0; i < out * in; i++)
        wd[i] = w[i];
    double mean_diag = 0.0;
    for (int64_t i = 0; i < in; i++) {
        if (hd[i * in + i] == 0.0) {
            hd[i * in + i] = 1.0;
            for (int64_t r = 0; r < out; r++)
                wd[r * in + i] = 0.0;
        }
        mean_diag += hd[i * in + i] / (double)in;
    }
    for (int64_t i = 0; i < in; i++)
        hd[i * in + i] += (double)damp * mean_diag;
    if (ref_inverse_upper_factor(hd, in, u) != 0) {
        *loss = NAN;
        goto done;
    }

    *loss = 0.0;
    const int64_t g = group_size > 0 ? group_size : in;
    for (int64_t r = 0; r < out; r++) {
        double *row = wd + r * in;
        float scale = 1.0f, zero = 0.0f;
        for (int64_t i = 0; i < in; i++) {
            if (i % block_size == 0)
                memcpy(block_start + i, row + i, (size_t)(in - i) * sizeof *row);
            if (i % g == 0) {
                int64_t count = i + g <= in ? g : in - i;
                for (int64_t j = 0; j < count; j++)
                    column_values[j] = (float)block_start[i + j];
                ref_find_params(bits, 0, column_values, count, 1, &scale,
                                &zero);
            }
            float x = (float)row[i];
            uint8_t code = ref_quantize(bits, x, scale, zero);
            double q = (double)(scale * ((float)code - zero));
            codes[r * in + i] = code;
            double err = (row[i] - q) / u[i * in + i];
            *loss += (row[i] - q) * (row[i] - q) / (u[i * in + i] * u[i * in + i]) / 2.0;
            for (int64_t j = i + 1; j < in; j++)
                row[j] -= err * u[i * in + j];
        }
    }
done:
    free(hd);
    free(wd);
    free(u);
    free(column_values);
    free(block_start);
}

static void test_gptq_reference(void)
{
    test_rng rng;
    test_rng_seed(&rng, 91);
    const int64_t ins[] = {1, 3, 17, 40};
    const int64_t block_sizes[] = {1, 7, 128};
    const int64_t out = 5;

    for (size_t ii = 0; ii < sizeof ins / sizeof ins[0]; ii++) {
        const int64_t in = ins[ii];
        float *w = test_floats(out * in);
        test_fill_normal(&rng, w, out * in, 1.0f);
        float *h = test_random_hessian(&rng, in, 3 * in + 4);
        /* Per row, and groups with a short last one where in allows. */
        const int64_t group_sizes[] = {-1, in >= 8 ? 8 : (in + 1) / 2};
        for (int bits = 2; bits <= 4; bits++) {
            for (size_t gi = 0; gi < 2; gi++) {
                const int64_t g = group_sizes[gi];
                for (size_t bi = 0; bi < 3; bi++) {
                    uint8_t *expected = test_bytes(out * in);
                    double ref_loss;
                    ref_gptq(bits, g, block_sizes[bi], 0.01f, w, h, out, in,
                             expected, &ref_loss);
                    astro_gptq_params params;
                    astro_gptq_params_init(&params, bits, g);
                    params.block_size = block_sizes[bi];
                    char label[96];
                    snprintf(label, sizeof label,
                             "in %lld bits %d g %lld block %lld",
                             (long long)in, bits, (long long)g,
                             (long long)params.block_size);
                    gptq_result result;
                    run_gptq(&params, w, h, out, in, &result, NULL);
                    check_gptq_result(label, &params, &result);
                    if (result.status != ASTRO_STATUS_OK)
                        continue;
                    /* Float and double sweeps may round a near-tie apart;
                     * allow one code in a hundred. */
                    long differ = 0;
                    for (int64_t i = 0; i < out * in; i++)
                        differ += result.codes[i] != expected[i];
                    CHECK(differ * 100 <= out * in, "%s: %ld of %lld codes "
                          "differ from the double-precision reference", label,
                          differ, (long long)(out * in));
                    CHECK(fabs(result.stats.loss - ref_loss) <=
                          1e-3 * ref_loss + 1e-6, "%s: loss %.8g, reference "
                          "%.8g", label, result.stats.loss, ref_loss);
                }
            }
        }
    }
}

static double output_error_reference(const float *w, const float *q,
                                     const float *h, int64_t out, int64_t in)
{
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < out; r++)
        for (int64_t i = 0; i < in; i++)
            for (int64_t j = 0; j < in; j++) {
                double hij = h[i * in + j];
                num += (double)(w[r * in + i] - q[r * in + i]) *
                       (w[r * in + j] - q[r * in + j]) * hij;
                den += (double)w[r * in + i] * w[r * in + j] * hij;
            }
    return den == 0.0 ? 0.0 : num / den;
}

static void test_output_error(void)
{
    test_rng rng;
    test_rng_seed(&rng, 101);
    const int64_t out = 4, in = 9;
    float *w = test_floats(out * in);
    float *q = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    for (int64_t i = 0; i < out * in; i++)
        q[i] = w[i] + 0.1f * (float)test_rng_normal(&rng);
    float *h = test_random_hessian(&rng, in, 20);
    double error = NAN;
    CHECK_STATUS(astro_output_error(w, q, h, out, in, &error), ASTRO_STATUS_OK);
    double expected = output_error_reference(w, q, h, out, in);
    CHECK(fabs(error - expected) <= 1e-4 * expected, "error %.8g, "
          "reference %.8g", error, expected);
    CHECK_STATUS(astro_output_error(w, w, h, out, in, &error), ASTRO_STATUS_OK);
    CHECK(error == 0.0, "identical weights: error %g", error);

    float *zero_w = test_floats(out * in);
    for (int64_t i = 0; i < out * in; i++)
        zero_w[i] = 0.0f;
    error = NAN;
    CHECK_STATUS(astro_output_error(zero_w, q, h, out, in, &error),
                 ASTRO_STATUS_OK);
    CHECK(error == 0.0, "zero weights must give 0, got %g", error);

    CHECK_STATUS(astro_output_error(NULL, q, h, out, in, &error),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_output_error(w, q, h, out, in, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_output_error(w, q, h, -1, in, &error),
                 ASTRO_STATUS_INVALID_ARGUMENT);
}

static void zero_column(float *h, int64_t in, int64_t column)
{
    for (int64_t i = 0; i < in; i++)
        h[i * in + column] = h[column * in + i] = 0.0f;
}

static void test_gptq_dead_columns(void)
{
    test_rng rng;
    test_rng_seed(&rng, 111);
    const int64_t out = 5, in = 24;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, 60);
    const int64_t dead[] = {0, 5, in - 1};
    for (int k = 0; k < 3; k++)
        zero_column(h, in, dead[k]);

    for (int act_order = 0; act_order <= 1; act_order++) {
        astro_gptq_params params;
        astro_gptq_params_init(&params, 4, 8);
        params.act_order = act_order;
        gptq_result result;
        run_gptq(&params, w, h, out, in, &result, NULL);
        check_gptq_result("dead columns", &params, &result);
        if (result.status != ASTRO_STATUS_OK)
            continue;
        CHECK(result.stats.dead_columns == 3 && result.stats.rtn_fallback == 0,
              "act_order %d: dead_columns %lld rtn_fallback %d", act_order,
              (long long)result.stats.dead_columns, result.stats.rtn_fallback);
        long nonzero = 0;
        for (int64_t r = 0; r < out; r++)
            for (int k = 0; k < 3; k++)
                nonzero += result.dequant[r * in + dead[k]] != 0.0f;
        CHECK(nonzero == 0, "act_order %d: %ld weights of dead columns are "
              "not zero", act_order, nonzero);
    }
}

/* A layer no token reached (H == 0) falls back to RTN of the weights. */
static void test_gptq_all_dead_falls_back_to_rtn(void)
{
    test_rng rng;
    test_rng_seed(&rng, 121);
    const int64_t out = 4, in = 20;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_floats(in * in);
    for (int64_t i = 0; i < in * in; i++)
        h[i] = 0.0f;

    astro_gptq_params params;
    astro_gptq_params_init(&params, 3, 8);
    params.act_order = 1;
    gptq_result result;
    run_gptq(&params, w, h, out, in, &result, NULL);
    check_gptq_result("all dead", &params, &result);
    if (result.status != ASTRO_STATUS_OK)
        return;
    CHECK(result.stats.rtn_fallback == 1, "rtn_fallback %d",
          result.stats.rtn_fallback);
    CHECK(result.stats.dead_columns == in, "dead_columns %lld",
          (long long)result.stats.dead_columns);

    uint8_t *codes = test_bytes(out * in);
    float *scales = test_floats(out * result.groups);
    float *zeros = test_floats(out * result.groups);
    float *dequant = test_floats(out * in);
    CHECK_STATUS(astro_rtn(&params.quant, w, out, in, codes, scales, zeros,
                           dequant), ASTRO_STATUS_OK);
    CHECK(memcmp(codes, result.codes, (size_t)(out * in)) == 0,
          "fallback codes differ from RTN of the original weights");
    long wrong_g_idx = 0;
    for (int64_t c = 0; c < in; c++)
        wrong_g_idx += result.g_idx[c] != c / 8;
    CHECK(wrong_g_idx == 0, "fallback g_idx is not c / group_size in %ld "
          "columns", wrong_g_idx);
}

static void test_gptq_not_positive_definite(void)
{
    /* Blocks [[1, 3], [3, 1]] have eigenvalue -2: the damped matrix is
     * positive definite only for a relative damping above 2. */
    const int64_t out = 2, in = 4;
    float h[16] = {0};
    for (int64_t b = 0; b < in; b += 2) {
        h[b * in + b] = h[(b + 1) * in + b + 1] = 1.0f;
        h[b * in + b + 1] = h[(b + 1) * in + b] = 3.0f;
    }
    float w[8] = {0.1f, -0.2f, 0.3f, 0.4f, 1.0f, 0.5f, -0.7f, 0.2f};

    astro_gptq_params params;
    astro_gptq_params_init(&params, 4, -1);
    params.damp_max = params.damp;
    gptq_result result;
    run_gptq(&params, w, h, out, in, &result, NULL);
    CHECK(result.status == ASTRO_STATUS_NOT_POSITIVE_DEFINITE,
          "no escalation allowed: status %d (%s)", (int)result.status,
          astro_status_message(result.status));

    /* With the default bound, escalation either succeeds above 1 or fails
     * with the same clear status. */
    astro_gptq_params_init(&params, 4, -1);
    run_gptq(&params, w, h, out, in, &result, NULL);
    if (result.status == ASTRO_STATUS_OK) {
        check_gptq_result("escalated damping", &params, &result);
        CHECK(result.stats.damp_used > 2.0, "damp_used %g cannot make H "
              "positive definite", result.stats.damp_used);
    } else {
        CHECK(result.status == ASTRO_STATUS_NOT_POSITIVE_DEFINITE,
              "default damp_max: status %d (%s)", (int)result.status,
              astro_status_message(result.status));
    }

    /* A negative diagonal makes lambda negative: never positive definite. */
    float negative[16] = {0};
    for (int64_t i = 0; i < in; i++)
        negative[i * in + i] = -1.0f;
    run_gptq(&params, w, negative, out, in, &result, NULL);
    CHECK(result.status == ASTRO_STATUS_NOT_POSITIVE_DEFINITE ||
          result.status == ASTRO_STATUS_INVALID_ARGUMENT,
          "negative diagonal: status %d (%s)", (int)result.status,
          astro_status_message(result.status));
}

/* H of a tokens x in X, accumulated and symmetrized by the core. */
static float *hessian_of_tokens(const float *x, int64_t tokens, int64_t in)
{
    float *h = test_floats(in * in);
    for (int64_t i = 0; i < in * in; i++)
        h[i] = 0.0f;
    int64_t n = 0;
    CHECK_STATUS(astro_hessian_update(h, in, &n, x, tokens, in),
                 ASTRO_STATUS_OK);
    CHECK_STATUS(astro_hessian_symmetrize(h, in), ASTRO_STATUS_OK);
    return h;
}

/* Rank-deficient H: fewer tokens than inputs, one token, duplicated inputs. */
static void test_gptq_rank_deficient(void)
{
    test_rng rng;
    test_rng_seed(&rng, 131);
    const int64_t out = 6, in = 32;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    const int64_t token_counts[] = {1, 3, 31};

    for (size_t ti = 0; ti < 3; ti++) {
        const int64_t tokens = token_counts[ti];
        float *x = test_floats(tokens * in);
        test_fill_normal(&rng, x, tokens * in, 1.0f);
        for (int64_t t = 0; t < tokens; t++)
            x[t * in + 7] = x[t * in + 6];
        float *h = hessian_of_tokens(x, tokens, in);

        for (int act_order = 0; act_order <= 1; act_order++) {
            astro_gptq_params params;
            astro_gptq_params_init(&params, 3, 16);
            params.act_order = act_order;
            char label[64];
            snprintf(label, sizeof label, "%lld tokens act_order %d",
                     (long long)tokens, act_order);
            gptq_result result;
            run_gptq(&params, w, h, out, in, &result, NULL);
            check_gptq_result(label, &params, &result);
        }
    }
}

/* An outlier input channel and an outlier weight column. */
static void test_gptq_outliers(void)
{
    test_rng rng;
    test_rng_seed(&rng, 141);
    const int64_t out = 8, in = 64, tokens = 256;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    for (int64_t r = 0; r < out; r++)
        w[r * in + 3] *= 1000.0f;
    float *x = test_floats(tokens * in);
    test_fill_normal(&rng, x, tokens * in, 1.0f);
    for (int64_t t = 0; t < tokens; t++)
        x[t * in + 40] *= 1000.0f;
    float *h = hessian_of_tokens(x, tokens, in);

    astro_gptq_params params;
    astro_gptq_params_init(&params, 3, 32);
    gptq_result result;
    run_gptq(&params, w, h, out, in, &result, NULL);
    check_gptq_result("outliers", &params, &result);
    if (result.status != ASTRO_STATUS_OK)
        return;

    float *rtn = test_floats(out * in);
    CHECK_STATUS(astro_rtn(&params.quant, w, out, in, test_bytes(out * in),
                           test_floats(out * result.groups),
                           test_floats(out * result.groups), rtn),
                 ASTRO_STATUS_OK);
    double gptq_error = NAN, rtn_error = NAN;
    CHECK_STATUS(astro_output_error(w, result.dequant, h, out, in, &gptq_error),
                 ASTRO_STATUS_OK);
    CHECK_STATUS(astro_output_error(w, rtn, h, out, in, &rtn_error),
                 ASTRO_STATUS_OK);
    CHECK(isfinite(gptq_error) && gptq_error < rtn_error,
          "GPTQ output error %g is not below RTN's %g", gptq_error,
          rtn_error);
}

static void test_gptq_non_finite_inputs(void)
{
    test_rng rng;
    test_rng_seed(&rng, 151);
    const int64_t out = 3, in = 8;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, 20);
    const float specials[] = {NAN, INFINITY, -INFINITY};

    for (int k = 0; k < 3; k++) {
        for (int where = 0; where < 3; where++) {
            float *w_bad = test_floats(out * in);
            float *h_bad = test_floats(in * in);
            memcpy(w_bad, w, (size_t)(out * in) * sizeof(float));
            memcpy(h_bad, h, (size_t)(in * in) * sizeof(float));
            if (where == 0)
                w_bad[5] = specials[k];
            else if (where == 1)
                h_bad[2 * in + 2] = specials[k];
            else
                h_bad[1 * in + 4] = h_bad[4 * in + 1] = specials[k];
            astro_gptq_params params;
            astro_gptq_params_init(&params, 4, -1);
            gptq_result result;
            run_gptq(&params, w_bad, h_bad, out, in, &result, NULL);
            CHECK(result.status == ASTRO_STATUS_NON_FINITE ||
                  result.status == ASTRO_STATUS_INVALID_ARGUMENT ||
                  result.status == ASTRO_STATUS_NOT_POSITIVE_DEFINITE,
                  "%g in %s: status %d (%s), expected an error", specials[k],
                  where == 0 ? "W" : where == 1 ? "diag H" : "off-diagonal H",
                  (int)result.status, astro_status_message(result.status));
        }
    }

    /* Finite but huge inputs: an error, or a finite result. */
    float *w_huge = test_floats(out * in);
    for (int64_t i = 0; i < out * in; i++)
        w_huge[i] = w[i] * 1e37f;
    astro_gptq_params params;
    astro_gptq_params_init(&params, 4, -1);
    gptq_result result;
    run_gptq(&params, w_huge, h, out, in, &result, NULL);
    if (result.status == ASTRO_STATUS_OK)
        check_gptq_result("huge weights", &params, &result);
    else
        CHECK(result.status == ASTRO_STATUS_NON_FINITE, "huge weights: status "
              "%d (%s)", (int)result.status,
              astro_status_message(result.status));
}

static void test_gptq_invalid(void)
{
    test_rng rng;
    test_rng_seed(&rng, 161);
    const int64_t out = 2, in = 4;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, 10);
    gptq_result r;
    gptq_result_alloc(&r, out, in, -1);
    astro_gptq_params params;
    astro_gptq_params_init(&params, 4, -1);

#define GPTQ_CALL(p, w_, h_, o, i)                                         \
    astro_gptq(p, w_, h_, o, i, r.codes, r.scales, r.zeros, r.g_idx,         \
               r.dequant, &r.stats, NULL)
    CHECK_STATUS(GPTQ_CALL(NULL, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(GPTQ_CALL(&params, NULL, h, out, in),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(GPTQ_CALL(&params, w, NULL, out, in),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(GPTQ_CALL(&params, w, h, -1, in),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(GPTQ_CALL(&params, w, h, out, -1),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    /* Rejected from the sizes alone, before any buffer is read. */
    CHECK_STATUS(GPTQ_CALL(&params, w, h, 1, TOO_LARGE),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_gptq(&params, w, h, out, in, NULL, r.scales, r.zeros,
                            r.g_idx, r.dequant, NULL, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_gptq(&params, w, h, out, in, r.codes, NULL, r.zeros,
                            r.g_idx, r.dequant, NULL, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_gptq(&params, w, h, out, in, r.codes, r.scales, NULL,
                            r.g_idx, r.dequant, NULL, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_gptq(&params, w, h, out, in, r.codes, r.scales, r.zeros,
                            NULL, r.dequant, NULL, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);

    astro_gptq_params bad = params;
    bad.quant.bits = 1;
    CHECK_STATUS(GPTQ_CALL(&bad, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.quant.group_size = 0;
    CHECK_STATUS(GPTQ_CALL(&bad, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.block_size = 0;
    CHECK_STATUS(GPTQ_CALL(&bad, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.block_size = -128;
    CHECK_STATUS(GPTQ_CALL(&bad, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.damp = -0.01f;
    CHECK_STATUS(GPTQ_CALL(&bad, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.damp = NAN;
    CHECK_STATUS(GPTQ_CALL(&bad, w, h, out, in), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.damp_max = INFINITY;
    astro_status status = GPTQ_CALL(&bad, w, h, out, in);
    CHECK(status == ASTRO_STATUS_OK || status == ASTRO_STATUS_INVALID_ARGUMENT,
          "damp_max = inf: status %d", (int)status);
#undef GPTQ_CALL

    /* Zero rows: nothing to quantize; success or a clear rejection. */
    status = astro_gptq(&params, w, h, 0, in, r.codes, r.scales, r.zeros,
                        r.g_idx, r.dequant, &r.stats, NULL);
    CHECK(status == ASTRO_STATUS_OK || status == ASTRO_STATUS_INVALID_ARGUMENT,
          "out = 0: status %d", (int)status);
    status = astro_gptq(&params, w, h, out, 0, r.codes, r.scales, r.zeros,
                        r.g_idx, r.dequant, &r.stats, NULL);
    CHECK(status == ASTRO_STATUS_OK || status == ASTRO_STATUS_INVALID_ARGUMENT,
          "in = 0: status %d", (int)status);
}

/* ======================================================================== */
/* Cancellation, allocation failures, determinism, threads                   */
/* ======================================================================== */

typedef struct cancel_counter {
    int calls;
    int stop_at;  /* return 1 from this call on (1-based); 0: never */
} cancel_counter;

static int count_and_cancel(void *context)
{
    cancel_counter *counter = context;
    counter->calls++;
    return counter->stop_at > 0 && counter->calls >= counter->stop_at;
}

static void test_gptq_cancel(void)
{
    test_rng rng;
    test_rng_seed(&rng, 171);
    const int64_t out = 8, in = 384;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, in + 16);
    astro_gptq_params params;
    astro_gptq_params_init(&params, 4, 128);

    for (int stop_at = 1; stop_at <= 2; stop_at++) {
        cancel_counter counter = {0, stop_at};
        astro_cancel cancel = {count_and_cancel, &counter};
        gptq_result result;
        int64_t live_before = astro_test_alloc_live();
        run_gptq(&params, w, h, out, in, &result, &cancel);
        CHECK(result.status == ASTRO_STATUS_INTERRUPTED,
              "cancel from call %d: status %d (%s) after %d calls", stop_at,
              (int)result.status, astro_status_message(result.status),
              counter.calls);
        CHECK(counter.calls == stop_at, "the hook was called %d times after "
              "it asked to stop at call %d", counter.calls, stop_at);
        CHECK(astro_test_alloc_live() == live_before, "%lld blocks leaked "
              "after an interrupted call",
              (long long)(astro_test_alloc_live() - live_before));
    }

    /* A hook that never cancels changes nothing. */
    cancel_counter counter = {0, 0};
    astro_cancel cancel = {count_and_cancel, &counter};
    gptq_result with_hook, without_hook;
    run_gptq(&params, w, h, out, in, &with_hook, &cancel);
    astro_cancel empty = {NULL, NULL};
    run_gptq(&params, w, h, out, in, &without_hook, &empty);
    check_gptq_result("hook never cancels", &params, &with_hook);
    CHECK(counter.calls >= 2, "a 3-block sweep polled the hook %d times",
          counter.calls);
    CHECK(without_hook.status == ASTRO_STATUS_OK &&
          memcmp(with_hook.codes, without_hook.codes, (size_t)(out * in)) == 0,
          "the hook changed the result");
}

/*
 * Makes each allocation of `call` fail in turn: every failure must return
 * OUT_OF_MEMORY and leave no block live.
 */
typedef astro_status (*core_call)(void *context);

static void check_allocation_failures(const char *label, core_call call,
                                      void *context)
{
    astro_test_alloc_fail_from(-1);
    int64_t live_before = astro_test_alloc_live();
    astro_status status = call(context);
    int64_t attempts = astro_test_alloc_attempts();
    CHECK(status == ASTRO_STATUS_OK, "%s: status %d (%s)", label, (int)status,
          astro_status_message(status));
    CHECK(astro_test_alloc_live() == live_before, "%s: %lld blocks left "
          "live after success", label,
          (long long)(astro_test_alloc_live() - live_before));

    for (int64_t k = 0; k < attempts; k++) {
        astro_test_alloc_fail_from(k);
        status = call(context);
        astro_test_alloc_fail_from(-1);
        CHECK(status == ASTRO_STATUS_OUT_OF_MEMORY, "%s: allocation %lld "
              "failed but the status is %d (%s)", label, (long long)k,
              (int)status, astro_status_message(status));
        CHECK(astro_test_alloc_live() == live_before, "%s: allocation %lld "
              "failed and %lld blocks leaked", label, (long long)k,
              (long long)(astro_test_alloc_live() - live_before));
    }
}

typedef struct core_inputs {
    int64_t out, in, tokens;
    float *w, *h, *x, *h_out, *q;
    gptq_result result;
    astro_gptq_params gptq;
    astro_regularize_params regularize;
} core_inputs;

static astro_status call_gptq(void *context)
{
    core_inputs *c = context;
    gptq_result *r = &c->result;
    return astro_gptq(&c->gptq, c->w, c->h, c->out, c->in, r->codes,
                      r->scales, r->zeros, r->g_idx, r->dequant, &r->stats,
                      NULL);
}

static astro_status call_rtn(void *context)
{
    core_inputs *c = context;
    gptq_result *r = &c->result;
    return astro_rtn(&c->gptq.quant, c->w, c->out, c->in, r->codes, r->scales,
                     r->zeros, r->dequant);
}

static astro_status call_hessian_update(void *context)
{
    core_inputs *c = context;
    int64_t n = 0;
    for (int64_t i = 0; i < c->in * c->in; i++)
        c->h_out[i] = 0.0f;
    return astro_hessian_update(c->h_out, c->in, &n, c->x, c->tokens, c->in);
}

static astro_status call_output_error(void *context)
{
    core_inputs *c = context;
    double error;
    return astro_output_error(c->w, c->q, c->h, c->out, c->in, &error);
}

static astro_status call_regularize(void *context)
{
    core_inputs *c = context;
    return astro_regularize(&c->regularize, c->w, c->h, c->out, c->in, c->q,
                            NULL, NULL, NULL, NULL);
}

static void test_allocation_failures(void)
{
    test_rng rng;
    test_rng_seed(&rng, 181);
    core_inputs c;
    c.out = 6;
    c.in = 40;
    c.tokens = 50;
    c.w = test_floats(c.out * c.in);
    test_fill_normal(&rng, c.w, c.out * c.in, 1.0f);
    c.h = test_random_hessian(&rng, c.in, c.tokens);
    c.x = test_floats(c.tokens * c.in);
    test_fill_normal(&rng, c.x, c.tokens * c.in, 1.0f);
    c.h_out = test_floats(c.in * c.in);
    c.q = test_floats(c.out * c.in);
    test_fill_normal(&rng, c.q, c.out * c.in, 1.0f);

    for (int variant = 0; variant < 4; variant++) {
        astro_gptq_params_init(&c.gptq, 3, 8);
        c.gptq.block_size = 16;
        c.gptq.act_order = variant & 1;
        c.gptq.static_groups = (variant >> 1) & 1;
        c.gptq.quant.mse = variant == 3;
        gptq_result_alloc(&c.result, c.out, c.in, 8);
        char label[64];
        snprintf(label, sizeof label, "gptq act_order %d static %d",
                 c.gptq.act_order, c.gptq.static_groups);
        check_allocation_failures(label, call_gptq, &c);
    }
    c.gptq.quant.mse = 1;
    check_allocation_failures("rtn", call_rtn, &c);
    check_allocation_failures("hessian_update", call_hessian_update, &c);
    check_allocation_failures("output_error", call_output_error, &c);
}

static void test_regularize_allocation_failures(void)
{
    test_rng rng;
    test_rng_seed(&rng, 182);
    core_inputs c;
    c.out = 6;
    c.in = 40;
    c.w = test_floats(c.out * c.in);
    test_fill_normal(&rng, c.w, c.out * c.in, 1.0f);
    c.h = test_random_hessian(&rng, c.in, 50);
    c.q = test_floats(c.out * c.in);
    astro_regularize_params_init(&c.regularize);
    c.regularize.group_size = 8;
    c.regularize.max_iterations = 5;
    c.regularize.beta = 1e-3;
    for (int solver = 0; solver <= 1; solver++) {
        c.regularize.solver = (astro_solver)solver;
        check_allocation_failures(solver ? "regularize fista"
                                         : "regularize plain",
                                  call_regularize, &c);
    }
}

static void test_gptq_deterministic(void)
{
    test_rng rng;
    test_rng_seed(&rng, 191);
    const int64_t out = 16, in = 200;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, 300);
    astro_gptq_params params;
    astro_gptq_params_init(&params, 3, 64);
    params.act_order = 1;
    params.block_size = 32;

    gptq_result first, second;
    run_gptq(&params, w, h, out, in, &first, NULL);
    run_gptq(&params, w, h, out, in, &second, NULL);
    check_gptq_result("first run", &params, &first);
    CHECK(second.status == ASTRO_STATUS_OK &&
          memcmp(first.codes, second.codes, (size_t)(out * in)) == 0 &&
          memcmp(first.dequant, second.dequant,
                 (size_t)(out * in) * sizeof(float)) == 0 &&
          memcmp(first.g_idx, second.g_idx, (size_t)in * sizeof(int32_t)) == 0 &&
          first.stats.loss == second.stats.loss,
          "two runs with the same inputs and threads differ");
}

typedef struct thread_job {
    const astro_gptq_params *params;
    const float *w, *h;
    int64_t out, in;
    gptq_result result;
} thread_job;

static void *run_thread_job(void *argument)
{
    thread_job *job = argument;
    gptq_result *r = &job->result;
    r->status = astro_gptq(job->params, job->w, job->h, job->out, job->in,
                           r->codes, r->scales, r->zeros, r->g_idx,
                           r->dequant, &r->stats, NULL);
    return NULL;
}

/* Four threads quantize the same shared, const inputs at once. */
static void test_gptq_concurrent_callers(void)
{
    enum { THREADS = 4 };
    test_rng rng;
    test_rng_seed(&rng, 201);
    const int64_t out = 12, in = 160;
    float *w = test_floats(out * in);
    test_fill_normal(&rng, w, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, 200);
    astro_gptq_params params;
    astro_gptq_params_init(&params, 4, 32);
    params.act_order = 1;
    params.block_size = 64;

    gptq_result serial;
    run_gptq(&params, w, h, out, in, &serial, NULL);
    check_gptq_result("serial", &params, &serial);

    thread_job jobs[THREADS];
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        jobs[t] = (thread_job){&params, w, h, out, in, {0}};
        gptq_result_alloc(&jobs[t].result, out, in, params.quant.group_size);
    }
    for (int t = 0; t < THREADS; t++)
        CHECK(pthread_create(&threads[t], NULL, run_thread_job, &jobs[t]) == 0,
              "pthread_create failed");
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);
    for (int t = 0; t < THREADS; t++) {
        gptq_result *r = &jobs[t].result;
        CHECK(r->status == ASTRO_STATUS_OK &&
              memcmp(r->codes, serial.codes, (size_t)(out * in)) == 0 &&
              memcmp(r->dequant, serial.dequant,
                     (size_t)(out * in) * sizeof(float)) == 0,
              "thread %d: status %d, result differs from the serial call", t,
              (int)r->status);
    }
}

/* ======================================================================== */
/* Regularization                                                            */
/* ======================================================================== */

static void test_regularize(void)
{
    test_rng rng;
    test_rng_seed(&rng, 211);
    const int64_t out = 4, in = 32;
    float *w0 = test_floats(out * in);
    test_fill_normal(&rng, w0, out * in, 1.0f);
    float *h = test_random_hessian(&rng, in, 64);
    float *w = test_floats(out * in);
    float *alpha = test_floats(4);
    double *objective = test_doubles(51);
    astro_regularize_params params;
    astro_regularize_params_init(&params);
    params.group_size = 8;
    params.max_iterations = 50;
    params.beta = 1e-2;

    for (int solver = 0; solver <= 1; solver++) {
        params.solver = (astro_solver)solver;
        astro_regularize_stats stats;
        CHECK_STATUS(astro_regularize(&params, w0, h, out, in, w, alpha,
                                      objective, &stats, NULL),
                     ASTRO_STATUS_OK);
        CHECK(all_finite(w, out * in) && all_finite(alpha, 4),
              "solver %d: non-finite weights or alpha", solver);
        CHECK(stats.iterations >= 1 && stats.iterations <= 50,
              "solver %d: %d iterations", solver, stats.iterations);
        CHECK(isfinite(stats.objective_final) &&
              stats.objective_final <= stats.objective_initial * (1 + 1e-6),
              "solver %d: objective rose from %g to %g", solver,
              stats.objective_initial, stats.objective_final);
        CHECK(isfinite(stats.output_change) && stats.output_change >= 0.0,
              "solver %d: output_change %g", solver, stats.output_change);
    }

    /* beta == 0 returns the weights unchanged. */
    params.beta = 0.0;
    astro_regularize_stats stats;
    CHECK_STATUS(astro_regularize(&params, w0, h, out, in, w, NULL, NULL,
                                  &stats, NULL), ASTRO_STATUS_OK);
    CHECK(stats.stop_reason == ASTRO_STOP_ZERO_BETA, "stop_reason %d",
          (int)stats.stop_reason);
    CHECK(memcmp(w, w0, (size_t)(out * in) * sizeof(float)) == 0,
          "beta = 0 changed the weights");

    params.beta = 1e-2;
    cancel_counter counter = {0, 1};
    astro_cancel cancel = {count_and_cancel, &counter};
    int64_t live_before = astro_test_alloc_live();
    CHECK_STATUS(astro_regularize(&params, w0, h, out, in, w, NULL, NULL,
                                  NULL, &cancel), ASTRO_STATUS_INTERRUPTED);
    CHECK(astro_test_alloc_live() == live_before, "interrupted regularize "
          "leaked %lld blocks",
          (long long)(astro_test_alloc_live() - live_before));

    astro_regularize_params bad = params;
    CHECK_STATUS(astro_regularize(NULL, w0, h, out, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_regularize(&params, NULL, h, out, in, w, NULL, NULL,
                                  NULL, NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_regularize(&params, w0, NULL, out, in, w, NULL, NULL,
                                  NULL, NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_regularize(&params, w0, h, out, in, NULL, NULL, NULL,
                                  NULL, NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_regularize(&params, w0, h, -1, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(astro_regularize(&params, w0, h, out, TOO_LARGE, w, NULL,
                                  NULL, NULL, NULL),
                 ASTRO_STATUS_INVALID_ARGUMENT);
    bad.beta = -1.0;
    CHECK_STATUS(astro_regularize(&bad, w0, h, out, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.beta = NAN;
    CHECK_STATUS(astro_regularize(&bad, w0, h, out, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.group_size = 0;
    CHECK_STATUS(astro_regularize(&bad, w0, h, out, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.max_iterations = -1;
    CHECK_STATUS(astro_regularize(&bad, w0, h, out, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
    bad = params;
    bad.solver = (astro_solver)7;
    CHECK_STATUS(astro_regularize(&bad, w0, h, out, in, w, NULL, NULL, NULL,
                                  NULL), ASTRO_STATUS_INVALID_ARGUMENT);
}

/* Checks the projection of v onto {x : |x|_1 <= radius} by its KKT conditions. */
static void check_l1_projection(const char *label, const float *v,
                                const float *p, int64_t n, float radius)
{
    double norm_v = 0.0, norm_p = 0.0;
    for (int64_t i = 0; i < n; i++) {
        norm_v += fabs(v[i]);
        norm_p += fabs(p[i]);
    }
    if (norm_v <= radius) {
        CHECK(memcmp(v, p, (size_t)n * sizeof(float)) == 0,
              "%s: a point inside the ball moved", label);
        return;
    }
    CHECK(fabs(norm_p - radius) <= 1e-5 * (radius + norm_v),
          "%s: |p|_1 = %.9g, radius %g", label, norm_p, radius);

    /* p_i = sign(v_i) max(|v_i| - theta, 0) for one threshold theta. */
    double theta = -1.0;
    long wrong = 0;
    for (int64_t i = 0; i < n; i++) {
        if (p[i] != 0.0f) {
            wrong += (p[i] > 0) != (v[i] > 0) || fabsf(p[i]) > fabsf(v[i]);
            double t = fabs(v[i]) - fabs(p[i]);
            if (theta < 0.0)
                theta = t;
            wrong += fabs(t - theta) > 1e-5 * (1.0 + fabs(v[i]));
        }
    }
    for (int64_t i = 0; i < n && theta >= 0.0; i++)
        if (p[i] == 0.0f)
            wrong += fabs(v[i]) > theta + 1e-5 * (1.0 + theta);
    CHECK(wrong == 0, "%s: %ld entries break the soft-threshold form", label,
          wrong);
}

static void test_project_l1_ball(void)
{
    test_rng rng;
    test_rng_seed(&rng, 221);
    const int64_t n = 50;
    float *v = test_floats(n);
    float *p = test_floats(n);
    float *scratch = test_floats(n);
    const float radii[] = {0.0f, 0.5f, 5.0f, 1e3f};

    for (int kind = 0; kind < 4; kind++) {
        for (int64_t i = 0; i < n; i++) {
            float x = (float)test_rng_normal(&rng);
            v[i] = kind == 0 ? x : kind == 1 ? 0.25f : kind == 2 ? -fabsf(x)
                   : (i % 3 == 0 ? 0.0f : (i % 2 ? 1.0f : -1.0f));
        }
        for (int ri = 0; ri < 4; ri++) {
            char label[48];
            snprintf(label, sizeof label, "kind %d radius %g", kind, radii[ri]);
            astro_project_l1_ball(v, n, radii[ri], p, scratch);
            if (radii[ri] == 0.0f) {
                long nonzero = 0;
                for (int64_t i = 0; i < n; i++)
                    nonzero += p[i] != 0.0f;
                CHECK(nonzero == 0, "%s: %ld entries survive radius 0", label,
                      nonzero);
                continue;
            }
            check_l1_projection(label, v, p, n, radii[ri]);

            /* In place (result aliases v) gives the same answer. */
            float *alias = test_floats(n);
            memcpy(alias, v, (size_t)n * sizeof(float));
            astro_project_l1_ball(alias, n, radii[ri], alias, scratch);
            CHECK(memcmp(alias, p, (size_t)n * sizeof(float)) == 0,
                  "%s: in-place projection differs", label);
        }
    }
    astro_project_l1_ball(v, 0, 1.0f, p, scratch);
    float one = 3.0f, projected = 0.0f;
    astro_project_l1_ball(&one, 1, 1.0f, &projected, scratch);
    CHECK(projected == 1.0f, "projecting 3 onto radius 1 gave %g", projected);
}

/* ======================================================================== */
/* Runner                                                                    */
/* ======================================================================== */

typedef struct test_case {
    const char *name;
    void (*run)(void);
    /* Non-NULL: a known core bug, reported as XFAIL instead of failing the
     * run until it is fixed (then the runner reports XPASS). */
    const char *known_failure;
} test_case;

/* A test, and a test that fails on a known core bug (reason given). */
#define TEST(name) {#name, test_##name, NULL}
#define KNOWN_BUG(name, reason) {#name, test_##name, reason}

static const test_case TESTS[] = {
    TEST(status_messages),
    TEST(num_threads),
    TEST(params_init),
    TEST(hessian_streaming),
    TEST(hessian_invalid),
    TEST(quant_params_reference),
    TEST(quant_degenerate_groups),
    TEST(quant_range_overflow),
    TEST(quant_invalid),
    TEST(rtn_reference),
    TEST(rtn_invalid),
    TEST(rtn_non_finite_weights),
    TEST(pack_rows_roundtrip),
    TEST(pack_rows_invalid),
    TEST(pack_zeros_roundtrip),
    TEST(dequantize),
    TEST(gptq_diagonal_hessian_is_rtn),
    TEST(gptq_act_order_groups),
    TEST(gptq_reference),
    TEST(output_error),
    TEST(gptq_dead_columns),
    TEST(gptq_all_dead_falls_back_to_rtn),
    TEST(gptq_not_positive_definite),
    TEST(gptq_rank_deficient),
    TEST(gptq_outliers),
    TEST(gptq_non_finite_inputs),
    TEST(gptq_invalid),
    TEST(gptq_cancel),
    TEST(allocation_failures),
    TEST(regularize_allocation_failures),
    TEST(gptq_deterministic),
    TEST(gptq_concurrent_callers),
    TEST(regularize),
    TEST(project_l1_ball),
};

static int selected(const char *name, int argc, char **argv)
{
    int filters = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        filters++;
        if (strstr(name, argv[i]) != NULL)
            return 1;
    }
    return filters == 0;
}

/* Runs one test in this process; returns its number of failed checks. */
static long run_in_process(const test_case *test)
{
    test_failed_checks = 0;
    test->run();
    test_free_all();
    return test_failed_checks;
}

/*
 * Runs one test in a child process, so a sanitizer abort or a crash fails
 * that test alone and the rest still run. Returns 1 when it passed.
 */
static int run_in_child(const test_case *test)
{
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 0;
    }
    if (child == 0)
        exit(run_in_process(test) == 0 ? 0 : 1);

    int status = 0;
    if (waitpid(child, &status, 0) < 0) {
        perror("waitpid");
        return 0;
    }
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "  %s: killed by signal %d (the sanitizer report is "
                "above)\n", test->name, WTERMSIG(status));
        return 0;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
    int in_process = 0;
    for (int i = 1; i < argc; i++)
        in_process |= strcmp(argv[i], "--no-fork") == 0;

    int run = 0, failed = 0, known = 0;
    for (size_t i = 0; i < sizeof TESTS / sizeof TESTS[0]; i++) {
        const test_case *test = &TESTS[i];
        if (!selected(test->name, argc, argv))
            continue;
        run++;
        int passed = in_process ? run_in_process(test) == 0
                                : run_in_child(test);
        if (test->known_failure == NULL) {
            printf("%s %s\n", passed ? "ok   " : "FAIL ", test->name);
            failed += !passed;
        } else {
            printf("%s %s (known bug: %s)\n", passed ? "XPASS" : "XFAIL",
                   test->name, test->known_failure);
            known += !passed;
        }
        fflush(stdout);
    }
    printf("%d of %d tests passed, %d known failures\n", run - failed - known,
           run, known);
    return failed == 0 && run > 0 ? 0 : 1;
}
