/*
 * blas.h - the one place that names OpenBLAS and LAPACK symbols.
 *
 * The scipy-openblas32 wheel exports every symbol with a "scipy_" prefix;
 * setup.py defines ASTRO_BLAS_PREFIX accordingly ("" for a system OpenBLAS).
 * The integers are 32-bit (LP64 interface), so every dimension passed here
 * must fit in int; callers check with astro_blas_fits().
 */
#ifndef ASTRO_BLAS_H
#define ASTRO_BLAS_H

#include <limits.h>
#include <stdint.h>

#ifndef ASTRO_BLAS_PREFIX
#define ASTRO_BLAS_PREFIX scipy_
#endif

#define ASTRO_CONCAT_(a, b) a##b
#define ASTRO_CONCAT(a, b) ASTRO_CONCAT_(a, b)
#define ASTRO_BLAS(name) ASTRO_CONCAT(ASTRO_BLAS_PREFIX, name)

typedef int astro_blas_int;

enum { ASTRO_CBLAS_ROW_MAJOR = 101, ASTRO_CBLAS_COL_MAJOR = 102 };
enum { ASTRO_CBLAS_NO_TRANS = 111, ASTRO_CBLAS_TRANS = 112 };
enum { ASTRO_CBLAS_UPPER = 121, ASTRO_CBLAS_LOWER = 122 };
enum { ASTRO_CBLAS_NON_UNIT = 131, ASTRO_CBLAS_UNIT = 132 };
enum { ASTRO_CBLAS_LEFT = 141, ASTRO_CBLAS_RIGHT = 142 };

/* CBLAS, declared with plain ints for the enums (same ABI as the header). */
void ASTRO_BLAS(cblas_sgemm)(int order, int trans_a, int trans_b,
                             astro_blas_int m, astro_blas_int n,
                             astro_blas_int k, float alpha, const float *a,
                             astro_blas_int lda, const float *b,
                             astro_blas_int ldb, float beta, float *c,
                             astro_blas_int ldc);
void ASTRO_BLAS(cblas_ssyrk)(int order, int uplo, int trans,
                             astro_blas_int n, astro_blas_int k, float alpha,
                             const float *a, astro_blas_int lda, float beta,
                             float *c, astro_blas_int ldc);
void ASTRO_BLAS(cblas_sger)(int order, astro_blas_int m, astro_blas_int n,
                            float alpha, const float *x, astro_blas_int incx,
                            const float *y, astro_blas_int incy, float *a,
                            astro_blas_int lda);
void ASTRO_BLAS(cblas_sgemv)(int order, int trans, astro_blas_int m,
                             astro_blas_int n, float alpha, const float *a,
                             astro_blas_int lda, const float *x,
                             astro_blas_int incx, float beta, float *y,
                             astro_blas_int incy);
void ASTRO_BLAS(cblas_strsm)(int order, int side, int uplo, int trans_a,
                             int diag, astro_blas_int m, astro_blas_int n,
                             float alpha, const float *a, astro_blas_int lda,
                             float *b, astro_blas_int ldb);
void ASTRO_BLAS(cblas_strmm)(int order, int side, int uplo, int trans_a,
                             int diag, astro_blas_int m, astro_blas_int n,
                             float alpha, const float *a, astro_blas_int lda,
                             float *b, astro_blas_int ldb);
void ASTRO_BLAS(openblas_set_num_threads)(int num_threads);

/* LAPACK (Fortran interface, column-major; trailing hidden string lengths). */
void ASTRO_BLAS(spotrf_)(const char *uplo, const astro_blas_int *n, float *a,
                         const astro_blas_int *lda, astro_blas_int *info,
                         size_t uplo_len);
void ASTRO_BLAS(strtri_)(const char *uplo, const char *diag,
                         const astro_blas_int *n, float *a,
                         const astro_blas_int *lda, astro_blas_int *info,
                         size_t uplo_len, size_t diag_len);

#define astro_sgemm ASTRO_BLAS(cblas_sgemm)
#define astro_ssyrk ASTRO_BLAS(cblas_ssyrk)
#define astro_sger ASTRO_BLAS(cblas_sger)
#define astro_sgemv ASTRO_BLAS(cblas_sgemv)
#define astro_strsm ASTRO_BLAS(cblas_strsm)
#define astro_strmm ASTRO_BLAS(cblas_strmm)
#define astro_openblas_set_num_threads ASTRO_BLAS(openblas_set_num_threads)
#define astro_spotrf ASTRO_BLAS(spotrf_)
#define astro_strtri ASTRO_BLAS(strtri_)

/* Returns 1 when every given dimension fits the 32-bit BLAS integer. */
static inline int astro_blas_fits(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0 && a <= INT_MAX && b <= INT_MAX;
}

#endif /* ASTRO_BLAS_H */
