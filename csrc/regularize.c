/*
 * regularize.c - the Astro solver: activation-guided L-infinity
 * regularization of a weight matrix before quantization.
 *
 * For each output row w (length in) with original w0, the solver minimizes
 *
 *     F(w) = 1/2 (w - w0)^T Hn (w - w0) + sum_k tau_k ||w^(k)||_inf
 *
 * where Hn = H / lambda_max(H), w^(k) is the k-th group of group_size input
 * columns (the quantizer's groups; the last one may be short) and
 * tau_k = beta * alpha_k. The activation weight of group k is
 *
 *     alpha_k = ||X^(k)||_F / mean_i ||X^(i)||_F,  ||X^(k)||_F^2 = sum_{c in k} H_cc
 *
 * so the alphas of a layer average to 1, and a weight outlier costs more
 * where its inputs are large. A group whose inputs are all zero gets
 * alpha_k = 0: it carries no penalty, and because its columns of H are zero
 * too (H is positive semidefinite), its weights keep their original values.
 * Such columns do not change the layer output, and GPTQ zeroes them anyway.
 *
 * The rows are independent, so the whole matrix moves at once. With
 * D = W - W0 as the state and G(D) = D Hn the gradient of the smooth term,
 * one step of proximal gradient descent with step 1 is
 *
 *     V = W0 + D - G(D);   W+ = prox(V);   D+ = W+ - W0
 *
 * with one GEMM (G of the new point) per step. prox is the proximal map of
 * tau_k ||.||_inf applied to every row and group. By the Moreau
 * decomposition it equals v - P(v), where P projects onto the L1 ball of
 * radius tau_k, and that reduces to clipping: with mu >= 0 the threshold of
 * that projection, prox(v) = clamp(v, -mu, mu), and mu = 0 (the whole group
 * becomes 0) when ||v||_1 <= tau_k.
 *
 * FISTA (Beck and Teboulle 2009) adds momentum: the step starts from
 * Y = D + m (D - D_prev). G is linear, so G(Y) = G(D) + m (G(D) - G(D_prev))
 * needs no extra GEMM, and the one GEMM per step computes G at the new point,
 * which also yields the smooth term 1/2 <G(D), D> there for free. That exact
 * objective drives an adaptive restart (O'Donoghue and Candes 2015): a
 * momentum step that raises F is rejected, and the next step is a plain one
 * from the last accepted point, so the objective never increases. Both
 * solvers stop when an accepted step lowers F by less than tol * F.
 */
#include "astro.h"
#include "blas.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Below this many weights a row-parallel loop costs more in thread wakeups
 * than it saves, so the solver's own loops run on one thread. */
enum { ASTRO_REG_PARALLEL_MIN = 1 << 15 };

/* Start vector entry of the power iteration: deterministic and not
 * orthogonal to any particular eigenvector in practice. */
static double power_start(int64_t i)
{
    return 1.0 + 0.5 * sin((double)i);
}

/* ------------------------------------------------------------------------ */
/* Parameters                                                                */
/* ------------------------------------------------------------------------ */

void astro_regularize_params_init(astro_regularize_params *params)
{
    params->beta = ASTRO_REGULARIZE_DEFAULT_BETA;
    params->group_size = 128;
    params->uniform_alpha = 0;
    params->max_iterations = 100;
    params->solver = ASTRO_SOLVER_FISTA;
    params->tol = ASTRO_REGULARIZE_DEFAULT_TOL;
    params->power_iterations = 200;
}

static int params_valid(const astro_regularize_params *p)
{
    if (p == NULL)
        return 0;
    if (!(p->beta >= 0.0) || !isfinite(p->beta))
        return 0;
    if (p->group_size == 0 || p->group_size < -1)
        return 0;
    if (p->max_iterations < 0 || p->power_iterations < 1)
        return 0;
    if (p->solver != ASTRO_SOLVER_PLAIN && p->solver != ASTRO_SOLVER_FISTA)
        return 0;
    return p->tol >= 0.0 && isfinite(p->tol);
}

/* ------------------------------------------------------------------------ */
/* L1-ball projection                                                        */
/* ------------------------------------------------------------------------ */

/* Independent accumulators per reduction, so that the compiler can keep
 * them in vector registers without reordering a floating-point sum. */
enum { ASTRO_REG_LANES = 8 };

/* Returns the sum (in double) and the maximum of |v_i| over n values. */
static double abs_sum_max(const float *v, int64_t n, float *max_out)
{
    double sum[ASTRO_REG_LANES] = {0};
    float peak[ASTRO_REG_LANES] = {0};
    int64_t i = 0;
    for (; i + ASTRO_REG_LANES <= n; i += ASTRO_REG_LANES) {
        for (int l = 0; l < ASTRO_REG_LANES; l++) {
            const float a = fabsf(v[i + l]);
            sum[l] += a;
            peak[l] = a > peak[l] ? a : peak[l];
        }
    }
    for (; i < n; i++) {
        const float a = fabsf(v[i]);
        sum[0] += a;
        peak[0] = a > peak[0] ? a : peak[0];
    }

    double total = 0.0;
    float max = 0.0f;
    for (int l = 0; l < ASTRO_REG_LANES; l++) {
        total += sum[l];
        max = peak[l] > max ? peak[l] : max;
    }
    *max_out = max;
    return total;
}

/* Returns the sum of the |v_i| above mu and stores how many there are. */
static double abs_sum_above(const float *v, int64_t n, double mu,
                            int64_t *count_out)
{
    double sum[ASTRO_REG_LANES] = {0};
    double count[ASTRO_REG_LANES] = {0};
    int64_t i = 0;
    for (; i + ASTRO_REG_LANES <= n; i += ASTRO_REG_LANES) {
        for (int l = 0; l < ASTRO_REG_LANES; l++) {
            const double a = fabsf(v[i + l]);
            const int above = a > mu;
            sum[l] += above ? a : 0.0;
            count[l] += above ? 1.0 : 0.0;
        }
    }
    for (; i < n; i++) {
        const double a = fabsf(v[i]);
        sum[0] += a > mu ? a : 0.0;
        count[0] += a > mu ? 1.0 : 0.0;
    }

    double total = 0.0, total_count = 0.0;
    for (int l = 0; l < ASTRO_REG_LANES; l++) {
        total += sum[l];
        total_count += count[l];
    }
    *count_out = (int64_t)total_count;
    return total;
}

/*
 * Finds the threshold mu of the projection of v (length n) onto the L1 ball
 * of radius r > 0: mu >= 0 solves sum_i max(|v_i| - mu, 0) = r, and mu = 0
 * when ||v||_1 <= r. Stores max_i |v_i| in *max_out.
 *
 * With the magnitudes sorted in decreasing order, a_1 >= a_2 >= ..., and
 * S_j = a_1 + ... + a_j, the threshold is mu = max_j (S_j - r) / j (Duchi
 * et al. 2008 find the maximizing j by sorting). Rather than sort, this
 * starts from two of those candidates, a_1 - r and (S_n - r) / n, both
 * lower bounds, and repeats mu <- (sum of a_i > mu, minus r) / count
 * (Michelot 1986). From any lower bound each pass raises mu without passing
 * the threshold, and the set {a_i > mu} only shrinks, so the loop ends with
 * the exact value once that set stops changing: after at most n passes, and
 * after two when the start a_1 - r already isolates the clipped entries,
 * the common case when tau is small next to the gaps between the largest
 * weights. `mu` is kept nondecreasing so that rounding cannot make the set
 * grow and the loop cycle.
 */
static double l1_threshold(const float *v, int64_t n, double r,
                           float *max_out)
{
    const double sum = abs_sum_max(v, n, max_out);
    if (sum <= r)
        return 0.0;

    const double from_max = (double)*max_out - r;
    const double from_mean = (sum - r) / (double)n;
    double mu = from_max > from_mean ? from_max : from_mean;
    int64_t count = -1;
    for (int64_t pass = 0; pass <= n; pass++) {
        int64_t active = 0;
        const double active_sum = abs_sum_above(v, n, mu, &active);
        if (active == 0)
            break;  /* only reachable through rounding at mu = max |v_i| */
        const double next = (active_sum - r) / (double)active;
        if (next > mu)
            mu = next;
        if (active == count)
            break;
        count = active;
    }
    return mu;
}

astro_status astro_project_l1_ball(const float *v, int64_t n, float radius,
                                   float *result, float *scratch)
{
    (void)scratch;
    if (n < 0 || (n > 0 && (v == NULL || result == NULL)))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (!(radius >= 0.0f) || !isfinite(radius))
        return ASTRO_STATUS_INVALID_ARGUMENT;

    if (radius == 0.0f) {
        for (int64_t i = 0; i < n; i++)
            result[i] = 0.0f;
        return ASTRO_STATUS_OK;
    }

    /* P(v)_i = sign(v_i) max(|v_i| - mu, 0); mu = 0 keeps v as it is. */
    float max_abs;
    const float mu = (float)l1_threshold(v, n, radius, &max_abs);
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(v[i]) - mu;
        a = a > 0.0f ? a : 0.0f;
        result[i] = copysignf(a, v[i]);
    }
    return ASTRO_STATUS_OK;
}

/* ------------------------------------------------------------------------ */
/* Setup: lambda_max, alpha, output-change denominator                      */
/* ------------------------------------------------------------------------ */

/*
 * Estimates lambda_max(H) by power iteration from a fixed start vector,
 * stopping when the Rayleigh quotient changes by less than 1e-7 relative.
 * The estimate approaches lambda_max from below. `x` and `y` hold n floats.
 * Returns 0 for a zero H.
 */
static double power_iteration(const float *h, int64_t n, int iterations,
                              float *x, float *y)
{
    double norm = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float)power_start(i);
        norm += (double)x[i] * x[i];
    }

    double rayleigh = 0.0;
    for (int it = 0; it < iterations; it++) {
        /* 1. y = H x with ||x|| = 1 after the scaling below. */
        const float scale = (float)(1.0 / sqrt(norm));
        for (int64_t i = 0; i < n; i++)
            x[i] *= scale;
        astro_sgemv(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_NO_TRANS,
                    (astro_blas_int)n, (astro_blas_int)n, 1.0f, h,
                    (astro_blas_int)n, x, 1, 0.0f, y, 1);

        /* 2. Rayleigh quotient x^T H x and the next iterate's norm. */
        double dot = 0.0;
        norm = 0.0;
        for (int64_t i = 0; i < n; i++) {
            dot += (double)x[i] * y[i];
            norm += (double)y[i] * y[i];
        }
        if (norm == 0.0)
            return 0.0;

        /* 3. Converged when the quotient settles. */
        const double previous = rayleigh;
        rayleigh = dot;
        float *swap = x;
        x = y;
        y = swap;
        if (it > 0 && fabs(rayleigh - previous) <= 1e-7 * fabs(rayleigh))
            break;
    }
    return rayleigh;
}

/*
 * Writes alpha_k (mean 1 over the groups, or 1 everywhere when `uniform`).
 * Returns 0 when every diagonal entry of H is zero, 1 otherwise.
 */
static int compute_alpha(const float *h, int64_t in, int64_t group_size,
                         int64_t groups, int uniform, float *alpha)
{
    double mean = 0.0;
    for (int64_t k = 0; k < groups; k++) {
        const int64_t start = k * group_size;
        const int64_t end = start + group_size < in ? start + group_size : in;
        double sq = 0.0;
        for (int64_t c = start; c < end; c++) {
            double d = h[c * in + c];
            sq += d > 0.0 ? d : 0.0;
        }
        alpha[k] = (float)sqrt(sq);
        mean += sqrt(sq);
    }
    mean /= (double)groups;
    if (mean == 0.0)
        return 0;

    for (int64_t k = 0; k < groups; k++)
        alpha[k] = uniform ? 1.0f : (float)(alpha[k] / mean);
    return 1;
}

/* Sums per-row partial results in a fixed order, for determinism. */
static double sum_rows(const double *row_values, int64_t out)
{
    double total = 0.0;
    for (int64_t r = 0; r < out; r++)
        total += row_values[r];
    return total;
}

/*
 * Computes tr(W0 H W0^T) with one GEMM through `product` (out x in floats,
 * overwritten).
 */
static double output_energy(const float *w0, const float *h, int64_t out,
                            int64_t in, int threads, float *product,
                            double *row_values)
{
    astro_sgemm(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_NO_TRANS,
                ASTRO_CBLAS_NO_TRANS, (astro_blas_int)out, (astro_blas_int)in,
                (astro_blas_int)in, 1.0f, w0, (astro_blas_int)in, h,
                (astro_blas_int)in, 0.0f, product, (astro_blas_int)in);

    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < out; r++) {
        const float *pr = product + r * in;
        const float *wr = w0 + r * in;
        double s = 0.0;
        for (int64_t c = 0; c < in; c++)
            s += (double)pr[c] * wr[c];
        row_values[r] = s;
    }
    return sum_rows(row_values, out);
}

/* ------------------------------------------------------------------------ */
/* One solver step                                                           */
/* ------------------------------------------------------------------------ */

/* Everything a step reads that stays fixed during a solve. */
typedef struct solver_problem {
    const float *w0;     /* out x in, original weights */
    const float *h;      /* in x in */
    const float *tau;    /* groups, beta * alpha_k */
    float inv_lambda;    /* 1 / lambda_max(H) */
    int64_t out, in, group_size, groups;
    int threads;
} solver_problem;

/*
 * Proximal step for every row, written to d_next (which may alias d or
 * d_prev, never g or g_prev):
 *
 *   1. Y = D + m (D - D_prev) and G(Y) = G + m (G - G_prev); with m == 0
 *      the previous point is not read.
 *   2. V = W0 + Y - G(Y), stored in d_next.
 *   3. Per group: threshold mu of the L1-ball projection of V with radius
 *      tau_k, then W+ = clamp(V, -mu, mu); a group with tau_k = 0 keeps V.
 *   4. d_next = W+ - W0, and the penalty sum_k tau_k max|W+^(k)| per row.
 */
static void prox_step(const solver_problem *p, float m, const float *d,
                      const float *d_prev, const float *g, const float *g_prev,
                      float *d_next, double *row_penalty)
{
    const int64_t in = p->in;

    #pragma omp parallel for num_threads(p->threads) schedule(static)
    for (int64_t r = 0; r < p->out; r++) {
        const float *w0 = p->w0 + r * in;
        const float *dr = d + r * in;
        const float *gr = g + r * in;
        float *v = d_next + r * in;

        /* Steps 1 and 2. Every element is read before it is overwritten,
         * so d_next may alias d or d_prev. */
        if (m != 0.0f) {
            const float *dp = d_prev + r * in;
            const float *gp = g_prev + r * in;
            for (int64_t c = 0; c < in; c++) {
                const float y = dr[c] + m * (dr[c] - dp[c]);
                const float gy = gr[c] + m * (gr[c] - gp[c]);
                v[c] = w0[c] + (y - gy);
            }
        } else {
            for (int64_t c = 0; c < in; c++)
                v[c] = w0[c] + (dr[c] - gr[c]);
        }

        /* Steps 3 and 4. */
        double penalty = 0.0;
        for (int64_t k = 0; k < p->groups; k++) {
            const int64_t start = k * p->group_size;
            const int64_t len = start + p->group_size < in ? p->group_size
                                                           : in - start;
            float *vk = v + start;
            const float *w0k = w0 + start;
            const float tau = p->tau[k];

            /* A group without penalty keeps V: mu = +inf clips nothing,
             * and its penalty term is 0 whatever its peak. */
            float mu = INFINITY, peak = 0.0f;
            if (tau > 0.0f)
                mu = (float)l1_threshold(vk, len, tau, &peak);
            peak = mu < peak ? mu : peak;

            for (int64_t c = 0; c < len; c++) {
                float w = vk[c];
                w = w > mu ? mu : w;
                w = w < -mu ? -mu : w;
                vk[c] = w - w0k[c];
            }
            penalty += (double)tau * peak;
        }
        row_penalty[r] = penalty;
    }
}

/*
 * Computes G = D Hn (one GEMM) and the smooth term 1/2 <G, D> per row.
 */
static void gradient(const solver_problem *p, const float *d, float *g,
                     double *row_smooth)
{
    const int64_t in = p->in;
    astro_sgemm(ASTRO_CBLAS_ROW_MAJOR, ASTRO_CBLAS_NO_TRANS,
                ASTRO_CBLAS_NO_TRANS, (astro_blas_int)p->out,
                (astro_blas_int)in, (astro_blas_int)in, p->inv_lambda, d,
                (astro_blas_int)in, p->h, (astro_blas_int)in, 0.0f, g,
                (astro_blas_int)in);

    #pragma omp parallel for num_threads(p->threads) schedule(static)
    for (int64_t r = 0; r < p->out; r++) {
        const float *dr = d + r * in;
        const float *gr = g + r * in;
        double s = 0.0;
        for (int64_t c = 0; c < in; c++)
            s += (double)gr[c] * dr[c];
        row_smooth[r] = 0.5 * s;
    }
}

/* Penalty sum_k tau_k ||w^(k)||_inf of W = W0 + D, per row. */
static void penalty_rows(const solver_problem *p, const float *d,
                         double *row_penalty)
{
    const int64_t in = p->in;

    #pragma omp parallel for num_threads(p->threads) schedule(static)
    for (int64_t r = 0; r < p->out; r++) {
        const float *w0 = p->w0 + r * in;
        const float *dr = d + r * in;
        double penalty = 0.0;
        for (int64_t k = 0; k < p->groups; k++) {
            const int64_t start = k * p->group_size;
            const int64_t end = start + p->group_size < in
                                    ? start + p->group_size : in;
            float peak = 0.0f;
            for (int64_t c = start; c < end; c++) {
                const float a = fabsf(w0[c] + dr[c]);
                peak = a > peak ? a : peak;
            }
            penalty += (double)p->tau[k] * peak;
        }
        row_penalty[r] = penalty;
    }
}

/* ------------------------------------------------------------------------ */
/* Solver                                                                    */
/* ------------------------------------------------------------------------ */

static void stats_clear(astro_regularize_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    stats->stop_reason = ASTRO_STOP_MAX_ITERATIONS;
}

/* Copies w0 into w, for the cases that leave the weights unchanged. */
static void copy_weights(const float *w0, int64_t out, int64_t in, float *w)
{
    if (w != w0)
        memmove(w, w0, (size_t)(out * in) * sizeof *w);
}

/* Scratch of one solve, allocated at once and freed at once. */
typedef struct solver_buffers {
    float *d_prev, *g, *g_prev;  /* out x in each; d_prev, g_prev FISTA only */
    float *tau;                  /* groups: alpha_k, then beta * alpha_k */
    float *vec_x, *vec_y;        /* in each, for the power iteration */
    double *row_smooth, *row_penalty;  /* out each */
} solver_buffers;

static void buffers_free(solver_buffers *b)
{
    free(b->d_prev);
    free(b->g);
    free(b->g_prev);
    free(b->tau);
    free(b->vec_x);
    free(b->vec_y);
    free(b->row_smooth);
    free(b->row_penalty);
    memset(b, 0, sizeof *b);
}

static int buffers_alloc(solver_buffers *b, int64_t out, int64_t in,
                         int64_t groups, int fista)
{
    const int64_t matrix = out * in;

    memset(b, 0, sizeof *b);
    b->g = astro_alloc(matrix, sizeof(float));
    if (fista) {
        b->d_prev = astro_alloc(matrix, sizeof(float));
        b->g_prev = astro_alloc(matrix, sizeof(float));
    }
    b->tau = astro_alloc(groups, sizeof(float));
    b->vec_x = astro_alloc(in, sizeof(float));
    b->vec_y = astro_alloc(in, sizeof(float));
    b->row_smooth = astro_alloc(out, sizeof(double));
    b->row_penalty = astro_alloc(out, sizeof(double));

    if (b->g == NULL || b->tau == NULL || b->vec_x == NULL ||
        b->vec_y == NULL || b->row_smooth == NULL ||
        b->row_penalty == NULL || (fista && (b->d_prev == NULL ||
                                             b->g_prev == NULL))) {
        buffers_free(b);
        return 0;
    }
    return 1;
}

/* The iterate and its gradient; the buffers are exchanged, never copied. */
typedef struct solver_point {
    float *d;  /* W - W0 */
    float *g;  /* D Hn */
} solver_point;

/*
 * Runs the iterations from `current`, whose objective is *objective_value
 * and smooth term *smooth_value. On return `current` is the last accepted
 * point (in any of the buffers), and both values describe it.
 * `trial` provides the buffers of the FISTA trial point, unused by the plain
 * solver, which updates `current` in place.
 */
static astro_status iterate(const astro_regularize_params *params,
                            const solver_problem *p, solver_buffers *b,
                            solver_point *current, solver_point *trial,
                            double *objective_value, double *smooth_value,
                            double *objective, astro_regularize_stats *stats,
                            const astro_cancel *cancel)
{
    const int fista = params->solver == ASTRO_SOLVER_FISTA;
    double t = 1.0;      /* FISTA momentum sequence */
    int have_prev = 0;   /* 1 when trial is the previous accepted point */

    for (int it = 0; it < params->max_iterations; it++) {
        if (astro_cancel_requested(cancel))
            return ASTRO_STATUS_INTERRUPTED;

        /* 1. Momentum m = (t_k - 1) / t_{k+1}; zero for the plain solver,
         *    on the first step and after a restart. */
        const double t_next = 0.5 * (1.0 + sqrt(1.0 + 4.0 * t * t));
        const float m = fista && have_prev ? (float)((t - 1.0) / t_next)
                                           : 0.0f;

        /* 2. Proximal step. FISTA reads the previous point from the trial
         *    buffers before it overwrites them. The plain solver updates D
         *    in place and then G, because it needs no previous point. */
        solver_point next = fista ? *trial : *current;
        prox_step(p, m, current->d, trial->d, current->g, trial->g, next.d,
                  b->row_penalty);

        /* 3. One GEMM: gradient and smooth term at the new point. */
        gradient(p, next.d, next.g, b->row_smooth);
        const double smooth = sum_rows(b->row_smooth, p->out);
        const double value = smooth + sum_rows(b->row_penalty, p->out);
        stats->iterations = it + 1;
        if (!isfinite(value))
            return ASTRO_STATUS_NON_FINITE;

        /* 4. Adaptive restart: a momentum step that raised F is dropped,
         *    and the next step is a plain one from the current point. */
        if (m != 0.0f && value > *objective_value) {
            stats->restarts++;
            t = 1.0;
            have_prev = 0;
            if (objective != NULL)
                objective[it + 1] = *objective_value;
            continue;
        }

        /* 5. Accept; the old point becomes the previous one. */
        const double decrease = *objective_value - value;
        if (fista) {
            *trial = *current;
            *current = next;
            have_prev = 1;
            t = t_next;
        }
        *objective_value = value;
        *smooth_value = smooth;
        if (objective != NULL)
            objective[it + 1] = value;

        /* 6. Stop once the relative decrease falls below tol. */
        if (params->tol > 0.0 && decrease <= params->tol * fabs(value)) {
            stats->stop_reason = ASTRO_STOP_TOLERANCE;
            break;
        }
    }
    return ASTRO_STATUS_OK;
}

/* Checks the arguments of astro_regularize(). */
static astro_status regularize_check(const astro_regularize_params *params,
                                     const float *w0, const float *h,
                                     int64_t out, int64_t in, const float *w,
                                     const astro_regularize_stats *stats)
{
    if (!params_valid(params) || out < 0 || in < 0)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (out > 0 && in > 0 && (w0 == NULL || h == NULL || w == NULL))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    if (!astro_blas_fits(out, in) || (out > 0 && in > INT64_MAX / out))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    return ASTRO_STATUS_OK;
}

/*
 * Solves with everything allocated: setup, then the iterations, then the
 * result W~ = W0 + D in w. Returns with w holding W~ or, on failure, any
 * values.
 */
static astro_status regularize_run(const astro_regularize_params *params,
                                   solver_problem *p, solver_buffers *b,
                                   float *w, float *alpha, double *objective,
                                   astro_regularize_stats *stats,
                                   const astro_cancel *cancel)
{
    const int64_t out = p->out, in = p->in;
    const size_t matrix = (size_t)(out * in) * sizeof(float);

    /* 1. lambda_max(H) and alpha_k. */
    stats->lambda_max = power_iteration(p->h, in, params->power_iterations,
                                        b->vec_x, b->vec_y);
    if (!isfinite(stats->lambda_max))
        return ASTRO_STATUS_NON_FINITE;
    if (!compute_alpha(p->h, in, p->group_size, p->groups,
                       params->uniform_alpha, b->tau) ||
        stats->lambda_max <= 0.0) {
        stats->stop_reason = ASTRO_STOP_ZERO_HESSIAN;
        for (int64_t k = 0; alpha != NULL && k < p->groups; k++)
            alpha[k] = b->tau[k];
        copy_weights(p->w0, out, in, w);
        return ASTRO_STATUS_OK;
    }
    for (int64_t k = 0; alpha != NULL && k < p->groups; k++)
        alpha[k] = b->tau[k];
    for (int64_t k = 0; k < p->groups; k++)
        b->tau[k] = (float)(params->beta * b->tau[k]);
    p->inv_lambda = (float)(1.0 / stats->lambda_max);

    /* 2. The output-change denominator tr(W0 H W0^T), one GEMM. */
    const double energy = output_energy(p->w0, p->h, out, in, p->threads, b->g,
                                        b->row_smooth);

    /* 3. The start W0: D = 0, G = 0, and F is the penalty alone. */
    solver_point current = {w, b->g};
    solver_point trial = {b->d_prev, b->g_prev};
    double smooth = 0.0;
    memset(w, 0, matrix);
    memset(b->g, 0, matrix);
    penalty_rows(p, w, b->row_penalty);
    double value = sum_rows(b->row_penalty, out);
    if (!isfinite(value))
        return ASTRO_STATUS_NON_FINITE;
    stats->objective_initial = value;
    if (objective != NULL)
        objective[0] = value;

    /* 4. The iterations, unless beta = 0 makes W the minimizer already. */
    astro_status status = ASTRO_STATUS_OK;
    if (params->beta == 0.0)
        stats->stop_reason = ASTRO_STOP_ZERO_BETA;
    else
        status = iterate(params, p, b, &current, &trial, &value, &smooth,
                         objective, stats, cancel);
    if (status != ASTRO_STATUS_OK)
        return status;

    /* 5. W~ = W0 + D into w, and the figures of the final point. */
    if (current.d != w)
        memcpy(w, current.d, matrix);
    for (int64_t i = 0; i < out * in; i++)
        w[i] += p->w0[i];
    stats->objective_final = value;
    stats->output_change =
        energy > 0.0 ? 2.0 * smooth * stats->lambda_max / energy : 0.0;
    return ASTRO_STATUS_OK;
}

astro_status astro_regularize(const astro_regularize_params *params,
                              const float *w0, const float *h, int64_t out,
                              int64_t in, float *w, float *alpha,
                              double *objective,
                              astro_regularize_stats *stats_out,
                              const astro_cancel *cancel)
{
    astro_regularize_stats local_stats;
    astro_regularize_stats *stats = stats_out != NULL ? stats_out : &local_stats;
    astro_status status = regularize_check(params, w0, h, out, in, w, stats);
    if (status != ASTRO_STATUS_OK)
        return status;
    stats_clear(stats);
    if (out == 0 || in == 0)
        return ASTRO_STATUS_OK;

    solver_problem problem = {
        .w0 = w0, .h = h, .tau = NULL, .inv_lambda = 0.0f,
        .out = out, .in = in,
        .group_size = params->group_size == -1 ? in : params->group_size,
        .groups = astro_num_groups(in, params->group_size),
        .threads = out * in >= ASTRO_REG_PARALLEL_MIN
                       ? astro_get_num_threads() : 1,
    };
    if (problem.group_size > in)
        problem.group_size = in;

    solver_buffers buffers;
    if (!buffers_alloc(&buffers, out, in, problem.groups,
                       params->solver == ASTRO_SOLVER_FISTA))
        return ASTRO_STATUS_OUT_OF_MEMORY;
    problem.tau = buffers.tau;

    status = regularize_run(params, &problem, &buffers, w, alpha, objective,
                            stats, cancel);
    buffers_free(&buffers);
    return status;
}
