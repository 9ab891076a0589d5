/*
 * hessian.c - streaming accumulation of H = (2/n) X^T X with syrk.
 *
 * After batches X_1 .. X_k with n = sum of their row counts,
 *     H = (2/n) sum_b X_b^T X_b,
 * updated per batch as H <- H * n_old / n_new + (2 / n_new) X_b^T X_b, so a
 * partial H is always the mean over the rows seen so far (times 2) and the
 * inputs can be dropped once folded in.
 */
#include "astro.h"
#include "blas.h"
#include "internal.h"

astro_status astro_hessian_update(float *h, int64_t in, int64_t *num_samples,
                                  const float *x, int64_t tokens,
                                  int64_t x_stride)
{
    if (h == NULL || num_samples == NULL || in < 1 || tokens < 0 ||
        *num_samples < 0 || x_stride < in || (tokens > 0 && x == NULL))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (!astro_blas_fits(in, tokens) || !astro_blas_fits(x_stride, 0))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (tokens == 0)
        return ASTRO_STATUS_OK;

    const int64_t n_old = *num_samples;
    const int64_t n_new = n_old + tokens;
    const float beta = (float)((double)n_old / (double)n_new);
    const float alpha = (float)(2.0 / (double)n_new);

    /* Row-major X is tokens x in, so X^T X is syrk with Trans. */
    astro_ssyrk(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_UPPER, ASTRO_CBLAS_TRANS,
                (astro_blas_int)in, (astro_blas_int)tokens, alpha, x,
                (astro_blas_int)x_stride, beta, h, (astro_blas_int)in);
    *num_samples = n_new;
    return ASTRO_STATUS_OK;
}

astro_status astro_hessian_symmetrize(float *h, int64_t in)
{
    if (h == NULL || in < 1)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    for (int64_t i = 0; i < in; i++)
        for (int64_t j = i + 1; j < in; j++)
            h[j * in + i] = h[i * in + j];
    return ASTRO_STATUS_OK;
}
