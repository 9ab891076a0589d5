/*
 * quantizer.c - uniform min-max quantizer, MSE range search, and RTN.
 *
 * A group of weights x is stored as codes in [0, maxq], maxq = 2^bits - 1:
 *
 *     code = clamp(rint(x / scale) + zero, 0, maxq)
 *     x^   = scale * (code - zero)
 *
 * Range rules (shared with the NumPy reference in the tests):
 *   1. The range [xmin, xmax] always contains 0: xmin = min(0, min x),
 *      xmax = max(0, max x).
 *   2. Symmetric: m = max(-xmin, xmax), range [-m, m], zero = (maxq + 1) / 2.
 *      The range is symmetric even when every value is >= 0, so no positive
 *      weight is clipped at half range.
 *   3. A range narrower than FLT_MIN (all zeros, or denormals only) becomes
 *      [-1, 1], so that the scale is a normal float and x / scale is finite.
 *   4. scale = (xmax - xmin) / maxq; asymmetric zero = rint(-xmin / scale).
 *      A range wider than FLT_MAX / 2 is reported as ASTRO_STATUS_NON_FINITE,
 *      because scale * (code - zero) at its ends could round past FLT_MAX.
 *   5. MSE search (optional): for p = 1, 1 - 1/grid, ... while the shrink is
 *      below max_shrink, scale the range by p and keep the first p with the
 *      smallest sum |x^ - x|^norm.
 *
 * Rounding is half to even, as rintf and torch.round do. The inner loops run
 * over rows with unit stride and no branches so that the compiler vectorizes
 * them with plain SSE2; rintf itself would not vectorize without SSE4.1, so
 * round_half_even() uses the 1.5 * 2^23 trick, exact for |t| < 2^22.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "astro.h"
#include "internal.h"

#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define ASTRO_MAX_RANGE (FLT_MAX / 2.0f)
#define ROUND_LIMIT 4194304.0f  /* 2^22 */

/* Rounds t half to even. |t| is first clamped to 2^22, which is harmless
 * because every caller clamps the code to [0, 255] afterwards. Without
 * -ffast-math the compiler keeps (t + M) - M as written. */
static inline float round_half_even(float t)
{
    t = t > ROUND_LIMIT ? ROUND_LIMIT : t;
    t = t < -ROUND_LIMIT ? -ROUND_LIMIT : t;
    return (t + ROUND_MAGIC) - ROUND_MAGIC;
}

void astro_quant_params_init(astro_quant_params *params, int bits,
                             int64_t group_size)
{
    params->bits = bits;
    params->group_size = group_size;
    params->sym = 0;
    params->mse = 0;
    params->mse_norm = 2.4f;
    params->mse_grid = 100;
    params->mse_max_shrink = 0.8f;
}

astro_status astro_quant_params_check(const astro_quant_params *params)
{
    if (params == NULL || params->bits < 2 || params->bits > 8)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (params->group_size == 0 || params->group_size < -1)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (params->mse &&
        (params->mse_grid < 1 || !(params->mse_norm > 0.0f) ||
         !(params->mse_max_shrink >= 0.0f) || !(params->mse_max_shrink < 1.0f)))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    return ASTRO_STATUS_OK;
}

void astro_quant_line(int bits, const float *x, const float *scale,
                      const float *zero, int64_t rows, uint8_t *code, float *q)
{
    const float maxq = (float)((1 << bits) - 1);

    for (int64_t r = 0; r < rows; r++) {
        float c = round_half_even(x[r] / scale[r]) + zero[r];
        /* Written so that NaN maps to 0: the uint8 cast below must never see
         * NaN, which is undefined behaviour in C. */
        c = c > 0.0f ? c : 0.0f;
        c = c < maxq ? c : maxq;
        if (code != NULL)
            code[r] = (uint8_t)c;
        if (q != NULL)
            q[r] = scale[r] * (c - zero[r]);
    }
}

/* Applies rules 2-4 of the file header to one row's [xmin, xmax]. */
static void finalize_params(int sym, float maxq, float xmin, float xmax,
                            float *scale, float *zero)
{
    if (sym) {
        float m = -xmin > xmax ? -xmin : xmax;
        xmin = -m;
        xmax = m;
    }
    if (xmax - xmin < FLT_MIN) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    *scale = (xmax - xmin) / maxq;
    *zero = sym ? (maxq + 1.0f) / 2.0f : round_half_even(-xmin / *scale);
}

/* Returns sum over the count values of row-set lines of |x^ - x|^norm, per
 * row, for the given per-row scale and zero. */
static void mse_errors(const float *x, int64_t count, int64_t rows,
                       int64_t x_stride, float maxq, const float *scale,
                       const float *zero, float norm, float *err)
{
    memset(err, 0, (size_t)rows * sizeof(float));
    for (int64_t j = 0; j < count; j++) {
        const float *line = x + j * x_stride;
        for (int64_t r = 0; r < rows; r++) {
            float c = round_half_even(line[r] / scale[r]) + zero[r];
            c = c > 0.0f ? c : 0.0f;
            c = c < maxq ? c : maxq;
            float d = fabsf(scale[r] * (c - zero[r]) - line[r]);
            err[r] += powf(d, norm);
        }
    }
}

/* Rule 5: shrinks each row's range while that lowers the error. */
static astro_status mse_search(const astro_quant_params *params,
                               const float *x, int64_t count, int64_t rows,
                               int64_t x_stride, const float *xmin,
                               const float *xmax, float *scale, float *zero)
{
    const float maxq = (float)((1 << params->bits) - 1);
    const int steps = (int)(params->mse_max_shrink * (float)params->mse_grid);
    float *work = astro_alloc(4 * rows, sizeof(float));
    if (work == NULL)
        return ASTRO_STATUS_OUT_OF_MEMORY;
    float *best = work, *trial_scale = work + rows;
    float *trial_zero = work + 2 * rows, *err = work + 3 * rows;

    for (int64_t r = 0; r < rows; r++)
        best[r] = INFINITY;

    for (int i = 0; i < steps; i++) {
        const float p = (float)(1.0 - (double)i / (double)params->mse_grid);
        for (int64_t r = 0; r < rows; r++)
            finalize_params(params->sym, maxq, p * xmin[r], p * xmax[r],
                            &trial_scale[r], &trial_zero[r]);
        mse_errors(x, count, rows, x_stride, maxq, trial_scale, trial_zero,
                   params->mse_norm, err);
        for (int64_t r = 0; r < rows; r++) {
            if (err[r] < best[r]) {
                best[r] = err[r];
                scale[r] = trial_scale[r];
                zero[r] = trial_zero[r];
            }
        }
    }
    free(work);
    return ASTRO_STATUS_OK;
}

astro_status astro_quant_find_params(const astro_quant_params *params,
                                     const float *x, int64_t count,
                                     int64_t rows, int64_t x_stride,
                                     float *scale, float *zero)
{
    astro_status status = astro_quant_params_check(params);
    if (status != ASTRO_STATUS_OK)
        return status;
    if (count < 0 || rows < 0 || x_stride < rows ||
        (rows > 0 && (x == NULL || scale == NULL || zero == NULL)))
        return ASTRO_STATUS_INVALID_ARGUMENT;

    const float maxq = (float)((1 << params->bits) - 1);
    float *range = astro_alloc(2 * rows, sizeof(float));
    if (range == NULL)
        return ASTRO_STATUS_OUT_OF_MEMORY;
    float *xmin = range, *xmax = range + rows;

    /* Rule 1: the range starts at [0, 0] so that it always contains 0. */
    memset(range, 0, (size_t)(2 * rows) * sizeof(float));
    for (int64_t j = 0; j < count; j++) {
        const float *line = x + j * x_stride;
        for (int64_t r = 0; r < rows; r++) {
            xmin[r] = line[r] < xmin[r] ? line[r] : xmin[r];
            xmax[r] = line[r] > xmax[r] ? line[r] : xmax[r];
        }
    }

    for (int64_t r = 0; r < rows; r++) {
        const float m = -xmin[r] > xmax[r] ? -xmin[r] : xmax[r];
        const float width = params->sym ? 2.0f * m : xmax[r] - xmin[r];
        if (!(width <= ASTRO_MAX_RANGE)) {
            free(range);
            return ASTRO_STATUS_NON_FINITE;
        }
        finalize_params(params->sym, maxq, xmin[r], xmax[r], &scale[r],
                        &zero[r]);
    }

    if (params->mse)
        status = mse_search(params, x, count, rows, x_stride, xmin, xmax,
                            scale, zero);
    free(range);
    return status;
}

/* Tiles keep both the reads and the writes of a transpose within a few
 * cache lines; one body serves both element types. */
#define TRANSPOSE_TILE 32
#define TRANSPOSE_BODY(src, rows, cols, dst)                                   \
    for (int64_t r0 = 0; r0 < (rows); r0 += TRANSPOSE_TILE) {                  \
        const int64_t r1 = r0 + TRANSPOSE_TILE < (rows) ? r0 + TRANSPOSE_TILE  \
                                                        : (rows);              \
        for (int64_t c0 = 0; c0 < (cols); c0 += TRANSPOSE_TILE) {              \
            const int64_t c1 = c0 + TRANSPOSE_TILE < (cols)                    \
                                   ? c0 + TRANSPOSE_TILE : (cols);             \
            for (int64_t r = r0; r < r1; r++)                                  \
                for (int64_t c = c0; c < c1; c++)                              \
                    (dst)[c * (rows) + r] = (src)[r * (cols) + c];             \
        }                                                                      \
    }

void astro_transpose(const float *src, int64_t rows, int64_t cols, float *dst)
{
    TRANSPOSE_BODY(src, rows, cols, dst)
}

void astro_transpose_u8(const uint8_t *src, int64_t rows, int64_t cols,
                        uint8_t *dst)
{
    TRANSPOSE_BODY(src, rows, cols, dst)
}

/* Lanes of the min/max scan in rtn_row(): independent running extremes that
 * the compiler keeps in one vector register. */
#define RTN_LANES 8

/* RTN of one row without the MSE search: the same rules as
 * astro_quant_find_params() and astro_quant_line(), computed along the row
 * so that W needs no transpose. Returns 1 when a group's range is wider than
 * ASTRO_MAX_RANGE (rule 4), else 0. */
static int rtn_row(int bits, int sym, const float *w, int64_t in,
                    int64_t group_size, int64_t groups, uint8_t *codes,
                    float *scales, float *zeros, float *dequant)
{
    const float maxq = (float)((1 << bits) - 1);
    int too_wide = 0;

    for (int64_t g = 0; g < groups; g++) {
        const int64_t c0 = g * group_size;
        const int64_t count = c0 + group_size < in ? group_size : in - c0;
        const float *x = w + c0;

        /* Rule 1, in lanes: the range starts at [0, 0]. */
        float lo[RTN_LANES] = {0}, hi[RTN_LANES] = {0};
        int64_t j = 0;
        for (; j + RTN_LANES <= count; j += RTN_LANES)
            for (int k = 0; k < RTN_LANES; k++) {
                lo[k] = x[j + k] < lo[k] ? x[j + k] : lo[k];
                hi[k] = x[j + k] > hi[k] ? x[j + k] : hi[k];
            }
        for (; j < count; j++) {
            lo[0] = x[j] < lo[0] ? x[j] : lo[0];
            hi[0] = x[j] > hi[0] ? x[j] : hi[0];
        }
        float xmin = 0.0f, xmax = 0.0f;
        for (int k = 0; k < RTN_LANES; k++) {
            xmin = lo[k] < xmin ? lo[k] : xmin;
            xmax = hi[k] > xmax ? hi[k] : xmax;
        }

        const float m = -xmin > xmax ? -xmin : xmax;
        const float width = sym ? 2.0f * m : xmax - xmin;
        too_wide |= !(width <= ASTRO_MAX_RANGE);

        float scale, zero;
        finalize_params(sym, maxq, xmin, xmax, &scale, &zero);
        scales[g] = scale;
        zeros[g] = zero;

        for (int64_t c = 0; c < count; c++) {
            float code = round_half_even(x[c] / scale) + zero;
            code = code > 0.0f ? code : 0.0f;
            code = code < maxq ? code : maxq;
            codes[c0 + c] = (uint8_t)code;
            if (dequant != NULL)
                dequant[c0 + c] = scale * (code - zero);
        }
    }
    return too_wide;
}

/* RTN row by row, rows split across threads; returns NON_FINITE when a row's
 * range is too wide (rule 4). */
static astro_status rtn_by_rows(const astro_quant_params *params,
                                const float *w, int64_t out, int64_t in,
                                uint8_t *codes, float *scales, float *zeros,
                                float *dequant)
{
    const int64_t group_size = params->group_size > 0 ? params->group_size : in;
    const int64_t groups = astro_num_groups(in, params->group_size);
    int too_wide = 0;

#pragma omp parallel for num_threads(astro_get_num_threads()) \
    if (out * in >= (1 << 16)) reduction(| : too_wide) schedule(static)
    for (int64_t r = 0; r < out; r++)
        too_wide |= rtn_row(params->bits, params->sym, w + r * in, in,
                            group_size, groups, codes + r * in,
                            scales + r * groups, zeros + r * groups,
                            dequant != NULL ? dequant + r * in : NULL);
    return too_wide ? ASTRO_STATUS_NON_FINITE : ASTRO_STATUS_OK;
}

astro_status astro_rtn(const astro_quant_params *params, const float *w,
                       int64_t out, int64_t in, uint8_t *codes, float *scales,
                       float *zeros, float *dequant)
{
    astro_status status = astro_quant_params_check(params);
    if (status != ASTRO_STATUS_OK)
        return status;
    if (out < 0 || in < 1 || params->group_size > in)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (out > 0 && (w == NULL || codes == NULL || scales == NULL || zeros == NULL))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (out == 0)
        return ASTRO_STATUS_OK;
    if (!astro_all_finite(w, out * in))
        return ASTRO_STATUS_NON_FINITE;
    if (!params->mse)
        return rtn_by_rows(params, w, out, in, codes, scales, zeros, dequant);

    /* The MSE search runs on W^T, one weight column per line. */
    const int64_t group_size = params->group_size > 0 ? params->group_size : in;
    const int64_t groups = astro_num_groups(in, params->group_size);
    float *wt = astro_alloc(in * out + 2 * out, sizeof(float));
    float *qt = dequant != NULL ? astro_alloc(in * out, sizeof(float)) : NULL;
    uint8_t *ct = astro_alloc(in * out, 1);
    if (wt == NULL || ct == NULL || (dequant != NULL && qt == NULL)) {
        free(wt);
        free(qt);
        free(ct);
        return ASTRO_STATUS_OUT_OF_MEMORY;
    }
    float *scale = wt + in * out, *zero = scale + out;

    /* Work on W^T so each weight column is one contiguous line of rows. */
    astro_transpose(w, out, in, wt);
    for (int64_t g = 0; g < groups && status == ASTRO_STATUS_OK; g++) {
        const int64_t c0 = g * group_size;
        const int64_t c1 = c0 + group_size < in ? c0 + group_size : in;
        status = astro_quant_find_params(params, wt + c0 * out, c1 - c0, out,
                                         out, scale, zero);
        for (int64_t r = 0; r < out && status == ASTRO_STATUS_OK; r++)
            if (!isfinite(scale[r]) || !isfinite(zero[r]))
                status = ASTRO_STATUS_NON_FINITE;
        for (int64_t r = 0; r < out; r++) {
            scales[r * groups + g] = scale[r];
            zeros[r * groups + g] = zero[r];
        }
        for (int64_t c = c0; c < c1; c++)
            astro_quant_line(params->bits, wt + c * out, scale, zero, out,
                             ct + c * out, qt != NULL ? qt + c * out : NULL);
    }

    if (status == ASTRO_STATUS_OK) {
        astro_transpose_u8(ct, in, out, codes);
        if (qt != NULL)
            astro_transpose(qt, in, out, dequant);
    }
    free(wt);
    free(qt);
    free(ct);
    return status;
}
