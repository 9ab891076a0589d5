/*
 * status.c - status messages and the thread-count setting shared by the core.
 */
#include "astro.h"
#include "blas.h"
#include "internal.h"

#include <math.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const status_messages[ASTRO_STATUS_COUNT_] = {
    [ASTRO_STATUS_OK] = "success",
    [ASTRO_STATUS_INVALID_ARGUMENT] =
        "invalid argument: a size, pointer or option is out of range",
    [ASTRO_STATUS_OUT_OF_MEMORY] = "out of memory: an internal allocation failed",
    [ASTRO_STATUS_NOT_POSITIVE_DEFINITE] =
        "the damped Hessian is not positive definite at the largest allowed "
        "damping; raise damp or damp_max, or check the calibration inputs",
    [ASTRO_STATUS_LAPACK_ERROR] = "LAPACK reported an invalid argument",
    [ASTRO_STATUS_NON_FINITE] = "a result contains NaN or Inf",
    [ASTRO_STATUS_INTERRUPTED] = "interrupted by the caller's cancel hook",
};

const char *astro_status_message(astro_status status)
{
    if ((int)status < 0 || status >= ASTRO_STATUS_COUNT_)
        return "unknown status code";
    return status_messages[status];
}

/* 0 means "not set yet": use OpenMP's default (the number of cores). Atomic
 * because any thread may set it while others read it. */
static _Atomic int num_threads_setting = 0;

void astro_set_num_threads(int num_threads)
{
    if (num_threads < 1)
        num_threads = 1;
    num_threads_setting = num_threads;
    astro_openblas_set_num_threads(num_threads);
}

int astro_get_num_threads(void)
{
    const int setting = num_threads_setting;
    if (setting > 0)
        return setting;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int astro_all_finite(const float *x, int64_t n)
{
    /* x - x is 0 for finite x and NaN for NaN and Inf; summing the flags
     * without a branch lets the loop vectorize. */
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad |= !(x[i] - x[i] == 0.0f);
    return !bad;
}

int astro_cancel_requested(const astro_cancel *cancel)
{
    return cancel != NULL && cancel->fn != NULL && cancel->fn(cancel->context);
}
