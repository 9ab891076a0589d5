/*
 * astro.h - public C API of the astro-ptq core.
 *
 * The core quantizes the weight of one linear layer, y = x W^T, with W stored
 * row-major as out x in (the PyTorch layout). It needs only the Hessian of
 * the layer loss, H = (2/n) X^T X (in x in), which callers accumulate from
 * calibration batches with astro_hessian_update().
 *
 * Conventions shared by every function here:
 *   - Matrices are float32, row-major and contiguous unless a stride is given.
 *   - The caller owns every buffer. No function keeps a pointer after return.
 *   - Functions return an astro_status. On failure the output buffers contain
 *     unspecified values but nothing is leaked and inputs marked const are
 *     untouched. The core never prints, never aborts and never exits.
 *   - Functions are reentrant: two threads may call them at once on
 *     different buffers. Internal parallelism comes from OpenBLAS and from
 *     row-parallel loops sized by astro_set_num_threads().
 *   - Results depend only on the inputs and the thread count: no global
 *     random state is used.
 */
#ifndef ASTRO_H
#define ASTRO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */

/* Values are stable: the Python binding maps them to exceptions by number. */
typedef enum astro_status {
    ASTRO_STATUS_OK = 0,
    ASTRO_STATUS_INVALID_ARGUMENT = 1,     /* a size, pointer or option is invalid */
    ASTRO_STATUS_OUT_OF_MEMORY = 2,        /* an internal allocation failed */
    ASTRO_STATUS_NOT_POSITIVE_DEFINITE = 3,/* Cholesky failed at the largest damping */
    ASTRO_STATUS_LAPACK_ERROR = 4,         /* LAPACK reported an argument error */
    ASTRO_STATUS_NON_FINITE = 5,           /* NaN or Inf appeared in a result */
    ASTRO_STATUS_INTERRUPTED = 6,          /* the cancel callback asked to stop */
    ASTRO_STATUS_COUNT_ = 7
} astro_status;

/* Returns a static English sentence describing `status`; never NULL. */
const char *astro_status_message(astro_status status);

/*
 * Cancellation hook. Long functions call it between blocks of work (at most a
 * few hundred milliseconds apart on large layers). A nonzero return stops the
 * function with ASTRO_STATUS_INTERRUPTED after it frees its scratch memory.
 * NULL means "never cancel".
 */
typedef int (*astro_cancel_fn)(void *context);

typedef struct astro_cancel {
    astro_cancel_fn fn;
    void *context;
} astro_cancel;

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */
/* ------------------------------------------------------------------------ */

/* Sets the thread count of OpenBLAS and of the core's own loops (>= 1). */
void astro_set_num_threads(int num_threads);
int astro_get_num_threads(void);

/* ------------------------------------------------------------------------ */
/* Hessian accumulation (hessian.c)                                          */
/* ------------------------------------------------------------------------ */

/*
 * Folds a batch of `tokens` input rows into the running Hessian.
 *
 *   h        in x in, row-major, contains H over the `*num_samples` rows seen so
 *            far. On return it contains H over num_samples + tokens rows:
 *            H <- H * n_old / n_new + (2 / n_new) X^T X, computed with syrk.
 *            Only the upper triangle (row-major) is written; call
 *            astro_hessian_symmetrize() before handing h to other functions.
 *   x        tokens x in, row stride `x_stride` floats (>= in).
 *   tokens   may be 0, which leaves h and *num_samples unchanged.
 */
astro_status astro_hessian_update(float *h, int64_t in, int64_t *num_samples,
                                  const float *x, int64_t tokens,
                                  int64_t x_stride);

/* Copies the upper triangle of the in x in matrix h onto its lower one. */
astro_status astro_hessian_symmetrize(float *h, int64_t in);

/* ------------------------------------------------------------------------ */
/* Quantizer (quantizer.c)                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Uniform quantizer parameters. Codes are integers in [0, maxq] with
 * maxq = 2^bits - 1, and a weight x is represented as scale * (code - zero).
 */
typedef struct astro_quant_params {
    int bits;            /* 2..8 */
    int64_t group_size;  /* > 0, or -1 for one group per row */
    int sym;             /* 1: range [-m, m] with zero = 2^(bits-1) */
    int mse;             /* 1: shrink the range to minimize sum |q - x|^norm */
    float mse_norm;      /* exponent of the clipping search, 2.4 by default */
    int mse_grid;        /* shrink step 1/grid, 100 by default */
    float mse_max_shrink;/* smallest range kept is 1 - max_shrink, 0.8 default */
} astro_quant_params;

/* Fills `params` with the defaults above for the given bits and group size. */
void astro_quant_params_init(astro_quant_params *params, int bits,
                             int64_t group_size);

/*
 * Finds scale and zero for `rows` independent vectors, each `count` values
 * long, where value j of vector r is x[j * x_stride + r]. This "transposed"
 * layout (one weight column per line, rows contiguous) is what the GPTQ sweep
 * keeps, so the loops vectorize over rows.
 *
 *   scale[r], zero[r] receive the parameters; zero is an integer stored as
 *   float. The range always contains 0; an all-zero vector uses [-1, 1].
 */
astro_status astro_quant_find_params(const astro_quant_params *params,
                                     const float *x, int64_t count,
                                     int64_t rows, int64_t x_stride,
                                     float *scale, float *zero);

/*
 * Quantizes one line of `rows` values with per-row parameters:
 *   code[r] = clamp(rint(x[r] / scale[r]) + zero[r], 0, maxq)
 *   q[r]    = scale[r] * (code[r] - zero[r])
 * Rounding is half to even. Either output may be NULL.
 */
void astro_quant_line(int bits, const float *x, const float *scale,
                      const float *zero, int64_t rows, uint8_t *code,
                      float *q);

/*
 * Round-to-nearest quantization of W (out x in, row-major).
 *   codes   out x in
 *   scales, zeros   out x groups, groups = ceil(in / group_size) (1 if -1)
 *   dequant out x in, may be NULL
 */
astro_status astro_rtn(const astro_quant_params *params, const float *w,
                       int64_t out, int64_t in, uint8_t *codes, float *scales,
                       float *zeros, float *dequant);

/* ------------------------------------------------------------------------ */
/* GPTQ (gptq.c)                                                             */
/* ------------------------------------------------------------------------ */

typedef struct astro_gptq_params {
    astro_quant_params quant;
    int64_t block_size;  /* columns per lazy-update block, 128 by default */
    float damp;          /* relative damping, lambda = damp * mean(diag H) */
    float damp_max;      /* escalate damp x10 on Cholesky failure up to this */
    int act_order;       /* 1: process columns by descending diag(H) */
    int static_groups;   /* 1: group parameters from the original weights */
} astro_gptq_params;

void astro_gptq_params_init(astro_gptq_params *params, int bits,
                            int64_t group_size);

typedef struct astro_gptq_stats {
    double loss;          /* sum over rows of sum_i (w_i - q_i)^2 / Hinv_ii / 2 */
    double damp_used;     /* relative damping that made the Cholesky succeed */
    int64_t dead_columns; /* columns with H_ii == 0, zeroed in the output */
    int rtn_fallback;     /* 1 when every column was dead and RTN was used */
} astro_gptq_stats;

/*
 * Quantizes W with GPTQ (Frantar et al. 2022) given H.
 *
 *   w        out x in, row-major, const.
 *   h        in x in, full symmetric, const (a scratch copy is made).
 *   codes    out x in, code of W[r, c] at [r, c] in the original column order.
 *   scales, zeros  out x groups, groups = ceil(in / group_size), 1 if -1.
 *   g_idx    in, group of each input column (c / group_size without
 *            act_order or with static groups).
 *   dequant  out x in, the fake-quantized weights GPTQ produced; may be NULL.
 *   stats    may be NULL.
 *   cancel   may be NULL.
 *
 * Scratch memory: about (out + 2 in) * in floats.
 */
astro_status astro_gptq(const astro_gptq_params *params, const float *w,
                        const float *h, int64_t out, int64_t in,
                        uint8_t *codes, float *scales, float *zeros,
                        int32_t *g_idx, float *dequant,
                        astro_gptq_stats *stats, const astro_cancel *cancel);

/*
 * Computes the relative output error of replacing W by Q under H:
 *   tr((W - Q) H (W - Q)^T) / tr(W H W^T).
 * Writes 0 when the denominator is 0.
 */
astro_status astro_output_error(const float *w, const float *q, const float *h,
                                int64_t out, int64_t in, double *error);

/* ------------------------------------------------------------------------ */
/* Packing into GPTQ checkpoint tensors (pack.c)                             */
/* ------------------------------------------------------------------------ */

/*
 * Packs codes (out x in, uint8) into qweight, int32 rows of 32 bits packed
 * along the input dimension, low bits first, as a continuous bit stream:
 * value c of output column r occupies bits [c*bits, c*bits + bits) of
 * column r of qweight. qweight is (ceil(in * bits / 32)) x out, row-major.
 */
astro_status astro_pack_rows(const uint8_t *codes, int64_t out, int64_t in,
                             int bits, int32_t *qweight);
astro_status astro_unpack_rows(const int32_t *qweight, int64_t out,
                               int64_t in, int bits, uint8_t *codes);

/*
 * Packs zero points (groups x out, already integers) along the output
 * dimension into qzeros, groups x ceil(out * bits / 32). `offset` is
 * subtracted before packing (1 for checkpoint format v1, 0 for v2) and the
 * result is taken modulo 2^bits; unpacking adds it back modulo 2^bits.
 */
astro_status astro_pack_zeros(const float *zeros, int64_t groups, int64_t out,
                              int bits, int offset, int32_t *qzeros);
astro_status astro_unpack_zeros(const int32_t *qzeros, int64_t groups,
                                int64_t out, int bits, int offset,
                                float *zeros);

/*
 * Dequantizes codes: w[r, c] = scales[r, g] * (codes[r, c] - zeros[r, g])
 * with g = g_idx[c]; scales and zeros are out x groups.
 */
astro_status astro_dequantize(const uint8_t *codes, const float *scales,
                              const float *zeros, const int32_t *g_idx,
                              int64_t out, int64_t in, int64_t groups,
                              float *w);

/* ------------------------------------------------------------------------ */
/* Astro regularization (regularize.c)                                       */
/* ------------------------------------------------------------------------ */

typedef enum astro_solver {
    ASTRO_SOLVER_PLAIN = 0,  /* proximal gradient with step 1/lambda_max */
    ASTRO_SOLVER_FISTA = 1   /* accelerated, with adaptive restart */
} astro_solver;

typedef enum astro_stop_reason {
    ASTRO_STOP_MAX_ITERATIONS = 0,
    ASTRO_STOP_TOLERANCE = 1,    /* relative objective decrease below tol */
    ASTRO_STOP_ZERO_BETA = 2,    /* beta == 0: the weights are returned as is */
    ASTRO_STOP_ZERO_HESSIAN = 3  /* H == 0: no output to preserve, W0 kept */
} astro_stop_reason;

/* Defaults of astro_regularize_params_init(); see regularize.c for why. */
#define ASTRO_REGULARIZE_DEFAULT_BETA 1e-4
#define ASTRO_REGULARIZE_DEFAULT_TOL 1e-6

typedef struct astro_regularize_params {
    double beta;           /* regularization weight, for H / lambda_max(H) */
    int64_t group_size;    /* groups of input columns, -1 for whole rows */
    int uniform_alpha;     /* 1: alpha_k = 1 (MagR); 0: activation-guided */
    int max_iterations;    /* proximal steps (GEMMs) at most; 100 by default,
                              200 (plain) in the paper */
    astro_solver solver;
    double tol;            /* stop when a step lowers the objective by less
                              than tol times its value; 0 disables */
    int power_iterations;  /* at most, for lambda_max(H); >= 1 */
} astro_regularize_params;

void astro_regularize_params_init(astro_regularize_params *params);

typedef struct astro_regularize_stats {
    int iterations;              /* proximal steps taken, one GEMM each */
    int restarts;                /* FISTA momentum steps rejected */
    astro_stop_reason stop_reason;
    double lambda_max;           /* power-iteration estimate (from below) */
    double objective_initial;    /* objective at W0, normalized H */
    double objective_final;
    double output_change;        /* ||X (W~ - W0)^T||^2 / ||X W0^T||^2 */
} astro_regularize_stats;

/*
 * Runs the Astro solver on every row of W0 (out x in) under H (in x in):
 * minimizes 1/2 tr((W - W0) Hn (W - W0)^T) + beta sum_rows sum_k alpha_k
 * ||w^(k)||_inf with Hn = H / lambda_max(H).
 *
 *   w0        out x in, const.
 *   h         in x in, full symmetric positive semidefinite, const.
 *   w         out x in, must not overlap w0. Receives W~.
 *   alpha     groups values (may be NULL): the alpha_k used, mean 1 unless
 *             uniform_alpha; groups = ceil(in / group_size), 1 if -1.
 *   objective max_iterations + 1 values (may be NULL): objective after
 *             each step, entry 0 at W0; a rejected FISTA step repeats
 *             the previous value; entries past the last step are left
 *             unwritten.
 *   stats     may be NULL.
 *   cancel    may be NULL; polled before every step.
 *
 * GEMMs: iterations, plus one for the output-change denominator. The
 * iterations start from W0. Scratch memory: (1 + 2 * fista) * out * in floats.
 * Returns ASTRO_STATUS_NON_FINITE if the objective stops being finite.
 */
astro_status astro_regularize(const astro_regularize_params *params,
                              const float *w0, const float *h, int64_t out,
                              int64_t in, float *w, float *alpha,
                              double *objective,
                              astro_regularize_stats *stats,
                              const astro_cancel *cancel);

/*
 * Projects v (length n) onto the L1 ball {x : ||x||_1 <= radius} into
 * `result` (which may alias v). Exact: result_i = sign(v_i) max(|v_i| - mu, 0)
 * with the threshold mu >= 0 found by an active-set iteration; v is returned
 * as is when ||v||_1 <= radius. Returns ASTRO_STATUS_INVALID_ARGUMENT for a
 * negative or non-finite radius or n < 0. `scratch` is unused and may be
 * NULL.
 */
astro_status astro_project_l1_ball(const float *v, int64_t n, float radius,
                                   float *result, float *scratch);

#ifdef __cplusplus
}
#endif

#endif /* ASTRO_H */
