/*
 * gptq.c - GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training
 * Quantization for Generative Pre-trained Transformers") over OpenBLAS.
 *
 * The sweep works on Wt = W^T (in x out), so that weight column i is row i of
 * Wt: every per-column loop then runs over contiguous output rows.
 *
 * Method, with the step numbers used in the code:
 *   1. Dead inputs: where H_ii == 0, set H_ii = 1 and zero column i of W.
 *      If every column is dead, return RTN of the original W instead.
 *   2. Static groups: scale and zero of every group from the weights of
 *      step 1, before any update.
 *   3. Act-order: permute columns by descending diag(H) (stable sort).
 *   4. Damping: H += lambda I with lambda = damp * mean(diag H); when the
 *      Cholesky factorization fails, retry from step 1 with damp x 10 until
 *      damp exceeds damp_max.
 *   5. Hinv = U^T U with U upper triangular (both steps run in panels of
 *      FACTOR_PANEL columns so that the cancel hook runs between panels). Rather than inverting H and
 *      factoring the inverse, factor the reversed matrix J H J = L L^T
 *      (J reverses index order) and invert L: then U = J L^-1 J is upper
 *      triangular with positive diagonal and U^T U = H^-1, so U is exactly the
 *      upper Cholesky factor of H^-1, at the cost of one potrf and one trtri.
 *      Reversing both indices of a row-major matrix reverses its storage.
 *   6. Column sweep in blocks of block_size columns [b0, b1). For column i:
 *        a. at a group start (dynamic groups), scale and zero from columns
 *           [i, i + group_size) as they stood when block b0 began, as the
 *           reference implementation does;
 *        b. q = quant(w_i); err = (w_i - q) / U_ii; loss += (w_i - q)^2 / U_ii^2 / 2;
 *        c. Wt[j] -= U_ij err for j in (i, b1): rank-1 updates inside a
 *           panel of GPTQ_PANEL columns, then one sgemm per panel for the
 *           rest of the block.
 *      After the block, Wt[b1:] -= U[b0:b1, b1:]^T Err: one sgemm.
 *   7. Undo the permutation while writing codes and dequantized weights.
 */
#include <math.h>
#include <string.h>

#include "astro.h"
#include "blas.h"
#include "internal.h"

void astro_gptq_params_init(astro_gptq_params *params, int bits,
                            int64_t group_size)
{
    astro_quant_params_init(&params->quant, bits, group_size);
    params->block_size = 128;
    params->damp = 0.01f;
    params->damp_max = 10.0f;
    params->act_order = 0;
    params->static_groups = 0;
}

/* Scratch buffers of one astro_gptq() call; all owned, freed together. */
typedef struct gptq_work {
    float *hw;          /* in x in: damped H, then U */
    float *wt;          /* in x out: W^T, updated; row i becomes q_i */
    float *err;         /* block x out: scaled errors of the block */
    float *snapshot;    /* block x out: the block's rows at block start */
    float *group;       /* group x out: a group's rows for find_params */
    float *scale;       /* out: current group scale */
    float *zero;        /* out: current group zero */
    float *static_scale;/* groups x out, static groups only */
    float *static_zero; /* groups x out, static groups only */
    uint8_t *codes_t;   /* in x out */
    int64_t *perm;      /* in: position -> original column */
    int64_t *inverse;   /* in: original column -> position */
    uint8_t *dead;      /* in: 1 where H_ii == 0 */
    uint8_t *mark;      /* in: scratch flags of permute_rows() */
    uint8_t *row_tmp;   /* 2 * out floats: scratch rows of permute_rows() */
} gptq_work;

static void gptq_work_free(gptq_work *work)
{
    free(work->hw);
    free(work->wt);
    free(work->err);
    free(work->snapshot);
    free(work->group);
    free(work->scale);
    free(work->zero);
    free(work->static_scale);
    free(work->static_zero);
    free(work->codes_t);
    free(work->perm);
    free(work->inverse);
    free(work->dead);
    free(work->mark);
    free(work->row_tmp);
    memset(work, 0, sizeof(*work));
}

static astro_status gptq_work_alloc(gptq_work *work, int64_t out, int64_t in,
                                    int64_t block, int64_t group_len,
                                    int64_t groups, int static_groups)
{
    memset(work, 0, sizeof(*work));
    work->hw = astro_alloc(in * in, sizeof(float));
    work->wt = astro_alloc(in * out, sizeof(float));
    work->err = astro_alloc(block * out, sizeof(float));
    work->snapshot = astro_alloc(block * out, sizeof(float));
    work->group = astro_alloc(group_len * out, sizeof(float));
    work->scale = astro_alloc(out, sizeof(float));
    work->zero = astro_alloc(out, sizeof(float));
    work->codes_t = astro_alloc(in * out, 1);
    work->perm = astro_alloc(in, sizeof(int64_t));
    work->inverse = astro_alloc(in, sizeof(int64_t));
    work->dead = astro_alloc(in, 1);
    work->mark = astro_alloc(in, 1);
    work->row_tmp = astro_alloc(2 * out, sizeof(float));
    int ok = work->hw && work->wt && work->err && work->snapshot &&
             work->group && work->scale && work->zero && work->codes_t &&
             work->perm && work->inverse && work->dead && work->mark &&
             work->row_tmp;
    if (ok && static_groups) {
        work->static_scale = astro_alloc(groups * out, sizeof(float));
        work->static_zero = astro_alloc(groups * out, sizeof(float));
        ok = work->static_scale && work->static_zero;
    }
    if (!ok) {
        gptq_work_free(work);
        return ASTRO_STATUS_OUT_OF_MEMORY;
    }
    return ASTRO_STATUS_OK;
}

/* Stable sort of positions by descending diag(H): merge sort on indices. */
static void sort_by_diag_desc(const float *h, int64_t in, int64_t *perm,
                              int64_t *tmp)
{
    for (int64_t i = 0; i < in; i++)
        perm[i] = i;
    for (int64_t width = 1; width < in; width *= 2) {
        for (int64_t lo = 0; lo < in; lo += 2 * width) {
            const int64_t mid = lo + width < in ? lo + width : in;
            const int64_t hi = lo + 2 * width < in ? lo + 2 * width : in;
            int64_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi) {
                /* Ties keep the left element first, so equal diagonals stay
                 * in their original order. */
                if (h[perm[b] * in + perm[b]] > h[perm[a] * in + perm[a]])
                    tmp[k++] = perm[b++];
                else
                    tmp[k++] = perm[a++];
            }
            while (a < mid)
                tmp[k++] = perm[a++];
            while (b < hi)
                tmp[k++] = perm[b++];
        }
        memcpy(perm, tmp, (size_t)in * sizeof(int64_t));
    }
}

/* Columns per panel of the blocked factorization and inverse below: the
 * cancel hook runs after each panel, so a large layer can be interrupted
 * within a fraction of a second instead of after a whole potrf or trtri. */
#define FACTOR_PANEL 512

/* Factors the column-major n x n matrix a = R^T R in place (upper R), one
 * panel at a time: potrf on the diagonal block, trsm for the block row, syrk
 * for the trailing matrix. */
static astro_status blocked_cholesky(float *a, astro_blas_int n,
                                     const astro_cancel *cancel)
{
    for (astro_blas_int k = 0; k < n; k += FACTOR_PANEL) {
        const astro_blas_int kb = n - k < FACTOR_PANEL ? n - k : FACTOR_PANEL;
        const astro_blas_int rest = n - k - kb;
        float *diag = a + k + (size_t)k * n;
        astro_blas_int info = 0;

        astro_spotrf("U", &kb, diag, &n, &info, 1);
        if (info > 0)
            return ASTRO_STATUS_NOT_POSITIVE_DEFINITE;
        if (info < 0)
            return ASTRO_STATUS_LAPACK_ERROR;
        if (rest > 0) {
            float *row = a + k + (size_t)(k + kb) * n;
            float *trailing = a + (k + kb) + (size_t)(k + kb) * n;
            astro_strsm(ASTRO_CBLAS_COL_MAJOR, ASTRO_CBLAS_LEFT,
                        ASTRO_CBLAS_UPPER, ASTRO_CBLAS_TRANS,
                        ASTRO_CBLAS_NON_UNIT, kb, rest, 1.0f, diag, n, row, n);
            astro_ssyrk(ASTRO_CBLAS_COL_MAJOR, ASTRO_CBLAS_UPPER,
                        ASTRO_CBLAS_TRANS, rest, kb, -1.0f, row, n, 1.0f,
                        trailing, n);
        }
        if (astro_cancel_requested(cancel))
            return ASTRO_STATUS_INTERRUPTED;
    }
    return ASTRO_STATUS_OK;
}

/* Inverts the column-major upper triangular R in place, one panel of
 * columns at a time: with the leading block already inverted,
 * [A11 A12; 0 A22]^-1 has A12 <- -A11^-1 A12 A22^-1 (trmm, then trsm) and
 * A22 <- A22^-1 (trtri). */
static astro_status blocked_triangular_inverse(float *a, astro_blas_int n,
                                               const astro_cancel *cancel)
{
    for (astro_blas_int j = 0; j < n; j += FACTOR_PANEL) {
        const astro_blas_int jb = n - j < FACTOR_PANEL ? n - j : FACTOR_PANEL;
        float *diag = a + j + (size_t)j * n;
        astro_blas_int info = 0;

        if (j > 0) {
            float *column = a + (size_t)j * n;
            astro_strmm(ASTRO_CBLAS_COL_MAJOR, ASTRO_CBLAS_LEFT,
                        ASTRO_CBLAS_UPPER, ASTRO_CBLAS_NO_TRANS,
                        ASTRO_CBLAS_NON_UNIT, j, jb, 1.0f, a, n, column, n);
            astro_strsm(ASTRO_CBLAS_COL_MAJOR, ASTRO_CBLAS_RIGHT,
                        ASTRO_CBLAS_UPPER, ASTRO_CBLAS_NO_TRANS,
                        ASTRO_CBLAS_NON_UNIT, j, jb, -1.0f, diag, n, column,
                        n);
        }
        astro_strtri("U", "N", &jb, diag, &n, &info, 1, 1);
        if (info > 0)
            return ASTRO_STATUS_NOT_POSITIVE_DEFINITE;
        if (info < 0)
            return ASTRO_STATUS_LAPACK_ERROR;
        if (astro_cancel_requested(cancel))
            return ASTRO_STATUS_INTERRUPTED;
    }
    return ASTRO_STATUS_OK;
}

/* Steps 4-5 on work->hw, already permuted: damps, factors and inverts.
 * Returns NOT_POSITIVE_DEFINITE when the factorization fails. */
static astro_status inverse_factor(float *hw, int64_t in, double lambda,
                                   const astro_cancel *cancel)
{
    const int64_t total = in * in;
    const astro_blas_int n = (astro_blas_int)in;

    for (int64_t i = 0; i < in; i++)
        hw[i * in + i] += (float)lambda;

    /* J H J: reverse the storage. */
    for (int64_t a = 0, b = total - 1; a < b; a++, b--) {
        const float t = hw[a];
        hw[a] = hw[b];
        hw[b] = t;
    }

    /* The column-major upper factor of a row-major buffer is the row-major
     * lower factor: J H J = L L^T, then L <- L^-1. */
    astro_status status = blocked_cholesky(hw, n, cancel);
    if (status == ASTRO_STATUS_OK)
        status = blocked_triangular_inverse(hw, n, cancel);
    if (status != ASTRO_STATUS_OK)
        return status;

    /* U = J L^-1 J, then clear the strict lower triangle (stale H values). */
    for (int64_t a = 0, b = total - 1; a < b; a++, b--) {
        const float t = hw[a];
        hw[a] = hw[b];
        hw[b] = t;
    }
    for (int64_t i = 1; i < in; i++)
        memset(hw + i * in, 0, (size_t)i * sizeof(float));
    return ASTRO_STATUS_OK;
}

/* Moves row i of data (rows x row_bytes) to row dest[i], in place, by
 * following the permutation's cycles. tmp has room for 2 rows
 * and mark for `rows` flags. */
static void permute_rows(void *data, int64_t rows, size_t row_bytes,
                         const int64_t *dest, uint8_t *tmp, uint8_t *mark)
{
    uint8_t *base = data;
    uint8_t *carry = tmp, *swap = tmp + row_bytes;

    memset(mark, 0, (size_t)rows);
    for (int64_t start = 0; start < rows; start++) {
        if (mark[start] || dest[start] == start)
            continue;
        memcpy(carry, base + (size_t)start * row_bytes, row_bytes);
        int64_t j = start;
        do {
            uint8_t *target = base + (size_t)dest[j] * row_bytes;
            memcpy(swap, target, row_bytes);
            memcpy(target, carry, row_bytes);
            memcpy(carry, swap, row_bytes);
            j = dest[j];
            mark[j] = 1;
        } while (j != start);
    }
}

/* Steps 1 and 3: copies H and W^T into the work buffers in sweep order.
 * W is transposed in cache-sized tiles and its rows then permuted in place,
 * since gathering columns of a row-major W one by one misses the cache on
 * every element. Returns the number of dead columns. */
static int64_t load_problem(gptq_work *work, const float *w, const float *h,
                            int64_t out, int64_t in, double *diag_mean)
{
    int64_t dead = 0;
    double diag_sum = 0.0;

    for (int64_t i = 0; i < in; i++)
        work->dead[i] = h[i * in + i] == 0.0f;

    astro_transpose(w, out, in, work->wt);
    permute_rows(work->wt, in, (size_t)out * sizeof(float), work->inverse,
                 work->row_tmp, work->mark);

    for (int64_t i = 0; i < in; i++) {
        const int64_t pi = work->perm[i];
        float *hrow = work->hw + i * in;
        for (int64_t j = 0; j < in; j++)
            hrow[j] = h[pi * in + work->perm[j]];
        if (work->dead[pi]) {
            hrow[i] = 1.0f;
            memset(work->wt + i * out, 0, (size_t)out * sizeof(float));
            dead++;
        }
        diag_sum += hrow[i];
    }
    *diag_mean = diag_sum / (double)in;
    return dead;
}

/* Step 2: parameters of every group of original columns, from W with dead
 * columns zeroed, stored groups x out. */
static astro_status compute_static_groups(const astro_gptq_params *params,
                                          gptq_work *work, const float *w,
                                          int64_t out, int64_t in,
                                          int64_t groups)
{
    const int64_t gs = params->quant.group_size;
    for (int64_t g = 0; g < groups; g++) {
        const int64_t c0 = g * gs;
        const int64_t c1 = c0 + gs < in ? c0 + gs : in;
        for (int64_t c = c0; c < c1; c++) {
            float *line = work->group + (c - c0) * out;
            for (int64_t r = 0; r < out; r++)
                line[r] = work->dead[c] ? 0.0f : w[r * in + c];
        }
        astro_status status = astro_quant_find_params(
            &params->quant, work->group, c1 - c0, out, out,
            work->static_scale + g * out, work->static_zero + g * out);
        if (status != ASTRO_STATUS_OK)
            return status;
    }
    return ASTRO_STATUS_OK;
}

/* Step 6a: parameters of the dynamic group starting at position i, from the
 * rows as they stood when the block [b0, b1) began. */
static astro_status dynamic_group_params(const astro_quant_params *quant,
                                         gptq_work *work, int64_t i,
                                         int64_t b0, int64_t b1, int64_t out,
                                         int64_t in)
{
    const int64_t end = i + quant->group_size < in ? i + quant->group_size : in;
    for (int64_t j = i; j < end; j++) {
        const float *src = j < b1 ? work->snapshot + (j - b0) * out
                                  : work->wt + j * out;
        memcpy(work->group + (j - i) * out, src, (size_t)out * sizeof(float));
    }
    return astro_quant_find_params(quant, work->group, end - i, out, out,
                                   work->scale, work->zero);
}

/* Step 6b for column i: quantizes Wt[i] in place and stores the scaled
 * error in err. Returns the column's share of the loss. */
static double quantize_column(const astro_quant_params *quant, gptq_work *work,
                              int64_t i, int64_t out, float d,
                              const float *scale, const float *zero, float *err)
{
    float *wi = work->wt + i * out;
    double column_loss = 0.0;

    /* Keep w in err while q overwrites w. */
    memcpy(err, wi, (size_t)out * sizeof(float));
    astro_quant_line(quant->bits, err, scale, zero, out,
                     work->codes_t + i * out, wi);
    for (int64_t r = 0; r < out; r++) {
        const float e = (err[r] - wi[r]) / d;
        err[r] = e;
        column_loss += (double)e * (double)e;
    }
    return column_loss / 2.0;
}

/* Columns per inner panel of step 6c: the rank-1 updates stay inside a panel
 * of this many rows of Wt, and one sgemm carries each panel's errors to the
 * rest of the block. Per-column BLAS-2 calls would spend their time waking
 * OpenBLAS threads rather than computing. */
#define GPTQ_PANEL 16

/* Step 6 for one block [b0, b1). Adds to *loss. */
static astro_status sweep_block(const astro_gptq_params *params,
                                gptq_work *work, int64_t out, int64_t in,
                                int64_t b0, int64_t b1, int64_t groups,
                                float *scales, float *zeros, double *loss)
{
    const astro_quant_params *quant = &params->quant;
    const int64_t gs = quant->group_size;
    const float *u = work->hw;
    astro_status status = ASTRO_STATUS_OK;

    memcpy(work->snapshot, work->wt + b0 * out,
           (size_t)((b1 - b0) * out) * sizeof(float));

    for (int64_t p0 = b0; p0 < b1; p0 += GPTQ_PANEL) {
        const int64_t p1 = p0 + GPTQ_PANEL < b1 ? p0 + GPTQ_PANEL : b1;

        for (int64_t i = p0; i < p1; i++) {
            float *err = work->err + (i - b0) * out;
            const float *scale = work->scale, *zero = work->zero;

            /* 6a: this column's quantizer parameters. */
            if (gs > 0 && params->static_groups) {
                const int64_t g = work->perm[i] / gs;
                scale = work->static_scale + g * out;
                zero = work->static_zero + g * out;
            } else if (gs > 0 && i % gs == 0) {
                status = dynamic_group_params(quant, work, i, b0, b1, out, in);
                if (status != ASTRO_STATUS_OK)
                    return status;
                const int64_t g = i / gs;
                for (int64_t r = 0; r < out; r++) {
                    scales[r * groups + g] = work->scale[r];
                    zeros[r * groups + g] = work->zero[r];
                }
            }

            /* 6b. */
            *loss += quantize_column(quant, work, i, out, u[i * in + i], scale,
                                     zero, err);

            /* 6c inside the panel: Wt[j] -= U_ij err, a vectorized axpy. */
            for (int64_t j = i + 1; j < p1; j++) {
                const float uij = u[i * in + j];
                float *wj = work->wt + j * out;
                for (int64_t r = 0; r < out; r++)
                    wj[r] -= uij * err[r];
            }
        }

        /* 6c for the rest of the block: Wt[p1:b1] -= U[p0:p1, p1:b1]^T Err. */
        if (p1 < b1)
            astro_sgemm(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_TRANS,
                        ASTRO_CBLAS_NO_TRANS, (astro_blas_int)(b1 - p1),
                        (astro_blas_int)out, (astro_blas_int)(p1 - p0), -1.0f,
                        u + p0 * in + p1, (astro_blas_int)in,
                        work->err + (p0 - b0) * out, (astro_blas_int)out, 1.0f,
                        work->wt + p1 * out, (astro_blas_int)out);
    }

    /* Lazy update of every later column with the block's errors. */
    if (b1 < in)
        astro_sgemm(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_TRANS,
                    ASTRO_CBLAS_NO_TRANS, (astro_blas_int)(in - b1),
                    (astro_blas_int)out, (astro_blas_int)(b1 - b0), -1.0f,
                    u + b0 * in + b1, (astro_blas_int)in, work->err,
                    (astro_blas_int)out, 1.0f, work->wt + b1 * out,
                    (astro_blas_int)out);
    return ASTRO_STATUS_OK;
}

/* Step 7: codes, g_idx and dequantized weights in the original order. The
 * sweep-order rows of codes_t and wt go back to column order in place, then
 * a tiled transpose writes the row-major outputs. */
static void write_outputs(const astro_gptq_params *params, gptq_work *work,
                          int64_t out, int64_t in, int64_t groups,
                          uint8_t *codes, float *scales, float *zeros,
                          int32_t *g_idx, float *dequant)
{
    const int64_t gs = params->quant.group_size;

    for (int64_t i = 0; i < in; i++) {
        const int64_t c = work->perm[i];
        if (gs <= 0)
            g_idx[c] = 0;
        else if (params->static_groups || !params->act_order)
            g_idx[c] = (int32_t)(c / gs);
        else
            g_idx[c] = (int32_t)(i / gs);
    }

    permute_rows(work->codes_t, in, (size_t)out, work->perm, work->row_tmp,
                 work->mark);
    astro_transpose_u8(work->codes_t, in, out, codes);
    if (dequant != NULL) {
        permute_rows(work->wt, in, (size_t)out * sizeof(float), work->perm,
                     work->row_tmp, work->mark);
        astro_transpose(work->wt, in, out, dequant);
    }

    if (gs > 0 && params->static_groups) {
        for (int64_t g = 0; g < groups; g++)
            for (int64_t r = 0; r < out; r++) {
                scales[r * groups + g] = work->static_scale[g * out + r];
                zeros[r * groups + g] = work->static_zero[g * out + r];
            }
    } else if (gs <= 0) {
        for (int64_t r = 0; r < out; r++) {
            scales[r] = work->scale[r];
            zeros[r] = work->zero[r];
        }
    }
}

static astro_status gptq_check(const astro_gptq_params *params, const float *w,
                               const float *h, int64_t out, int64_t in,
                               uint8_t *codes, float *scales, float *zeros,
                               int32_t *g_idx)
{
    if (params == NULL || astro_quant_params_check(&params->quant) != ASTRO_STATUS_OK)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (out < 1 || in < 1 || params->quant.group_size > in)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (params->block_size < 1 || !(params->damp >= 0.0f) ||
        !(params->damp_max >= params->damp) || !isfinite(params->damp_max))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (w == NULL || h == NULL || codes == NULL || scales == NULL ||
        zeros == NULL || g_idx == NULL)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (!astro_blas_fits(in, out))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (!astro_all_finite(w, out * in) || !astro_all_finite(h, in * in))
        return ASTRO_STATUS_NON_FINITE;
    return ASTRO_STATUS_OK;
}

/* Every column dead: the layer saw no input, so GPTQ has nothing to weigh
 * and RTN of the original weights is the
 * faithful result. */
static astro_status rtn_fallback(const astro_gptq_params *params,
                                 const float *w, int64_t out, int64_t in,
                                 uint8_t *codes, float *scales, float *zeros,
                                 int32_t *g_idx, float *dequant,
                                 astro_gptq_stats *stats)
{
    const int64_t gs = params->quant.group_size;
    for (int64_t c = 0; c < in; c++)
        g_idx[c] = gs > 0 ? (int32_t)(c / gs) : 0;
    stats->rtn_fallback = 1;
    stats->dead_columns = in;
    return astro_rtn(&params->quant, w, out, in, codes, scales, zeros, dequant);
}

astro_status astro_gptq(const astro_gptq_params *params, const float *w,
                        const float *h, int64_t out, int64_t in,
                        uint8_t *codes, float *scales, float *zeros,
                        int32_t *g_idx, float *dequant,
                        astro_gptq_stats *stats_out,
                        const astro_cancel *cancel)
{
    astro_status status =
        gptq_check(params, w, h, out, in, codes, scales, zeros, g_idx);
    if (status != ASTRO_STATUS_OK)
        return status;

    astro_gptq_stats stats = {0.0, 0.0, 0, 0};
    const int64_t gs = params->quant.group_size;
    const int64_t groups = astro_num_groups(in, gs);
    const int64_t block = params->block_size < in ? params->block_size : in;
    const int64_t group_len = gs > 0 ? gs : in;
    gptq_work work;

    status = gptq_work_alloc(&work, out, in, block, group_len, groups,
                             gs > 0 && params->static_groups);
    if (status != ASTRO_STATUS_OK)
        return status;

    /* Step 3: sweep order (identity without act-order). */
    if (params->act_order) {
        int64_t *tmp = astro_alloc(in, sizeof(int64_t));
        if (tmp == NULL) {
            gptq_work_free(&work);
            return ASTRO_STATUS_OUT_OF_MEMORY;
        }
        sort_by_diag_desc(h, in, work.perm, tmp);
        free(tmp);
    } else {
        for (int64_t i = 0; i < in; i++)
            work.perm[i] = i;
    }
    for (int64_t i = 0; i < in; i++)
        work.inverse[work.perm[i]] = i;

    /* Steps 1, 4, 5 with damping escalation. */
    double damp = params->damp;
    double diag_mean = 0.0;
    for (;;) {
        stats.dead_columns = load_problem(&work, w, h, out, in, &diag_mean);
        if (stats.dead_columns == in) {
            gptq_work_free(&work);
            status = rtn_fallback(params, w, out, in, codes, scales, zeros,
                                  g_idx, dequant, &stats);
            if (stats_out != NULL)
                *stats_out = stats;
            return status;
        }
        if (astro_cancel_requested(cancel)) {
            status = ASTRO_STATUS_INTERRUPTED;
            goto done;
        }
        status = inverse_factor(work.hw, in, damp * diag_mean, cancel);
        if (status != ASTRO_STATUS_NOT_POSITIVE_DEFINITE)
            break;
        damp = damp > 0.0 ? damp * 10.0 : 1e-6;
        if (damp > params->damp_max * (1.0 + 1e-6))
            break;
    }
    stats.damp_used = damp;
    if (status == ASTRO_STATUS_OK && astro_cancel_requested(cancel))
        status = ASTRO_STATUS_INTERRUPTED;
    if (status != ASTRO_STATUS_OK)
        goto done;

    /* Step 2 (needs the dead-column mask from step 1). */
    if (gs > 0 && params->static_groups) {
        status = compute_static_groups(params, &work, w, out, in, groups);
        if (status != ASTRO_STATUS_OK)
            goto done;
    }

    /* Per-row groups: one set of parameters from the starting weights. */
    if (gs <= 0) {
        status = astro_quant_find_params(&params->quant, work.wt, in, out, out,
                                         work.scale, work.zero);
        if (status != ASTRO_STATUS_OK)
            goto done;
    }

    /* Step 6. */
    for (int64_t b0 = 0; b0 < in; b0 += block) {
        const int64_t b1 = b0 + block < in ? b0 + block : in;
        status = sweep_block(params, &work, out, in, b0, b1, groups, scales,
                             zeros, &stats.loss);
        if (status != ASTRO_STATUS_OK)
            goto done;
        if (astro_cancel_requested(cancel)) {
            status = ASTRO_STATUS_INTERRUPTED;
            goto done;
        }
    }
    if (!isfinite(stats.loss)) {
        status = ASTRO_STATUS_NON_FINITE;
        goto done;
    }

    /* Step 7. */
    write_outputs(params, &work, out, in, groups, codes, scales, zeros, g_idx,
                  dequant);

done:
    gptq_work_free(&work);
    if (stats_out != NULL)
        *stats_out = stats;
    return status;
}

astro_status astro_output_error(const float *w, const float *q, const float *h,
                                int64_t out, int64_t in, double *error)
{
    if (w == NULL || q == NULL || h == NULL || error == NULL || out < 0 ||
        in < 1 || !astro_blas_fits(in, out))
        return ASTRO_STATUS_INVALID_ARGUMENT;

    /* Rows in chunks: stack [W - Q; W] for the chunk, multiply by H once, and
     * take the row-wise dot products. */
    const int64_t chunk = out < 256 ? out : 256;
    float *stacked = astro_alloc(2 * chunk * in, sizeof(float));
    float *product = astro_alloc(2 * chunk * in, sizeof(float));
    if (stacked == NULL || product == NULL) {
        free(stacked);
        free(product);
        return ASTRO_STATUS_OUT_OF_MEMORY;
    }

    double numerator = 0.0, denominator = 0.0;
    for (int64_t r0 = 0; r0 < out; r0 += chunk) {
        const int64_t rows = r0 + chunk < out ? chunk : out - r0;
        for (int64_t k = 0; k < rows * in; k++) {
            stacked[k] = w[r0 * in + k] - q[r0 * in + k];
            stacked[rows * in + k] = w[r0 * in + k];
        }
        astro_sgemm(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_NO_TRANS,
                    ASTRO_CBLAS_NO_TRANS, (astro_blas_int)(2 * rows),
                    (astro_blas_int)in, (astro_blas_int)in, 1.0f, stacked,
                    (astro_blas_int)in, h, (astro_blas_int)in, 0.0f, product,
                    (astro_blas_int)in);
        for (int64_t k = 0; k < rows * in; k++) {
            numerator += (double)stacked[k] * (double)product[k];
            denominator += (double)stacked[rows * in + k] *
                           (double)product[rows * in + k];
        }
    }
    free(stacked);
    free(product);
    *error = denominator > 0.0 ? numerator / denominator : 0.0;
    return ASTRO_STATUS_OK;
}
