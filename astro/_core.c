/*
 * _core.c - the CPython/NumPy binding of the C core.
 *
 * The Python modules of the package validate user input and convert dtypes. This layer
 * only turns arrays into C buffers, releases the GIL around the C call, and
 * maps an astro_status to an exception in raise_status(). Every function
 * keeps its owned references in locals that start NULL and releases them on
 * one exit path.
 *
 * Long calls poll for Ctrl-C through the core's cancel hook: the hook takes
 * the GIL at most every 50 ms, runs PyErr_CheckSignals() and, when a handler
 * raised, keeps the exception and tells the core to stop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <numpy/arrayobject.h>
#include <time.h>

#include "astro.h"

static PyObject *NumericalError = NULL;

/* ------------------------------------------------------------------------ */
/* Errors and cancellation                                                   */
/* ------------------------------------------------------------------------ */

/* Sets the Python exception for a failed status and returns NULL. */
static PyObject *raise_status(astro_status status, const char *operation)
{
    const char *message = astro_status_message(status);
    switch (status) {
    case ASTRO_STATUS_OUT_OF_MEMORY:
        PyErr_Format(PyExc_MemoryError, "%s: %s", operation, message);
        break;
    case ASTRO_STATUS_NOT_POSITIVE_DEFINITE:
    case ASTRO_STATUS_NON_FINITE:
    case ASTRO_STATUS_LAPACK_ERROR:
        PyErr_Format(NumericalError, "%s: %s", operation, message);
        break;
    case ASTRO_STATUS_INTERRUPTED:
        if (!PyErr_Occurred())
            PyErr_SetNone(PyExc_KeyboardInterrupt);
        break;
    default:
        PyErr_Format(PyExc_ValueError, "%s: %s", operation, message);
        break;
    }
    return NULL;
}

typedef struct signal_poll {
    double last_check;
    PyObject *type, *value, *traceback; /* the exception a handler raised */
} signal_poll;

static double monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* The cancel hook; called without the GIL. */
static int poll_signals(void *context)
{
    signal_poll *poll = context;
    const double now = monotonic_seconds();
    if (poll->type != NULL)
        return 1;
    if (now - poll->last_check < 0.05)
        return 0;
    poll->last_check = now;

    PyGILState_STATE gil = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() != 0;
    if (stop)
        PyErr_Fetch(&poll->type, &poll->value, &poll->traceback);
    PyGILState_Release(gil);
    return stop;
}

static void signal_poll_init(signal_poll *poll, astro_cancel *cancel)
{
    poll->last_check = monotonic_seconds();
    poll->type = poll->value = poll->traceback = NULL;
    cancel->fn = poll_signals;
    cancel->context = poll;
}

/* Re-raises the exception a signal handler raised during the call, if any. */
static void signal_poll_restore(signal_poll *poll)
{
    if (poll->type != NULL)
        PyErr_Restore(poll->type, poll->value, poll->traceback);
    poll->type = poll->value = poll->traceback = NULL;
}

/* ------------------------------------------------------------------------ */
/* Array helpers                                                             */
/* ------------------------------------------------------------------------ */

/* Returns a C-contiguous aligned array of `type` and rank `ndim` (a new
 * reference), casting when needed, or NULL with a TypeError/ValueError. */
static PyArrayObject *as_array(PyObject *object, int type, int ndim,
                               const char *name)
{
    PyArrayObject *array = (PyArrayObject *)PyArray_FROMANY(
        object, type, ndim, ndim,
        NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    if (array == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a %d-D array", name, ndim);
    }
    return array;
}

/* Checks that `object` is a writable C-contiguous array of `type` and rank
 * `ndim`, for outputs updated in place. Returns a borrowed pointer. */
static PyArrayObject *as_inplace_array(PyObject *object, int type, int ndim,
                                       const char *name)
{
    if (!PyArray_Check(object)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray", name);
        return NULL;
    }
    PyArrayObject *array = (PyArrayObject *)object;
    if (PyArray_TYPE(array) != type || PyArray_NDIM(array) != ndim ||
        !PyArray_IS_C_CONTIGUOUS(array) || !PyArray_ISWRITEABLE(array) ||
        !PyArray_ISALIGNED(array)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a writable C-contiguous %d-D array of the "
                     "expected dtype", name, ndim);
        return NULL;
    }
    return array;
}

static PyArrayObject *new_array(int ndim, npy_intp d0, npy_intp d1, int type)
{
    npy_intp dims[2] = {d0, d1};
    return (PyArrayObject *)PyArray_ZEROS(ndim, dims, type, 0);
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                   */
/* ------------------------------------------------------------------------ */

static PyObject *py_set_num_threads(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n))
        return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError,
                     "num_threads must be >= 1, got %d", n);
        return NULL;
    }
    astro_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(astro_get_num_threads());
}

/* ------------------------------------------------------------------------ */
/* Hessian                                                                   */
/* ------------------------------------------------------------------------ */

static PyObject *py_hessian_update(PyObject *self, PyObject *args)
{
    PyObject *h_obj, *x_obj;
    long long num_samples;
    PyArrayObject *x = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OLO:hessian_update", &h_obj, &num_samples,
                          &x_obj))
        return NULL;
    PyArrayObject *h = as_inplace_array(h_obj, NPY_FLOAT32, 2, "h");
    if (h == NULL)
        return NULL;
    x = as_array(x_obj, NPY_FLOAT32, 2, "x");
    if (x == NULL)
        return NULL;

    const int64_t in = PyArray_DIM(h, 0);
    if (PyArray_DIM(h, 1) != in || PyArray_DIM(x, 1) != in) {
        PyErr_Format(PyExc_ValueError,
                     "h must be (in, in) and x (tokens, in); got h %zd x %zd, "
                     "x %zd x %zd", (Py_ssize_t)PyArray_DIM(h, 0),
                     (Py_ssize_t)PyArray_DIM(h, 1),
                     (Py_ssize_t)PyArray_DIM(x, 0),
                     (Py_ssize_t)PyArray_DIM(x, 1));
        goto done;
    }

    int64_t n = num_samples;
    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_hessian_update(PyArray_DATA(h), in, &n, PyArray_DATA(x),
                                  PyArray_DIM(x, 0), in);
    Py_END_ALLOW_THREADS
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "hessian_update");
        goto done;
    }
    result = PyLong_FromLongLong(n);
done:
    Py_XDECREF(x);
    return result;
}

static PyObject *py_hessian_symmetrize(PyObject *self, PyObject *args)
{
    PyObject *h_obj;
    if (!PyArg_ParseTuple(args, "O:hessian_symmetrize", &h_obj))
        return NULL;
    PyArrayObject *h = as_inplace_array(h_obj, NPY_FLOAT32, 2, "h");
    if (h == NULL)
        return NULL;
    if (PyArray_DIM(h, 0) != PyArray_DIM(h, 1)) {
        PyErr_SetString(PyExc_ValueError, "h must be square");
        return NULL;
    }
    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_hessian_symmetrize(PyArray_DATA(h), PyArray_DIM(h, 0));
    Py_END_ALLOW_THREADS
    if (status != ASTRO_STATUS_OK)
        return raise_status(status, "hessian_symmetrize");
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* Quantization                                                              */
/* ------------------------------------------------------------------------ */

static PyObject *py_rtn(PyObject *self, PyObject *args)
{
    PyObject *w_obj;
    int bits, sym, mse;
    long long group_size;
    PyArrayObject *w = NULL, *codes = NULL, *scales = NULL, *zeros = NULL,
                  *dequant = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OiLpp:rtn", &w_obj, &bits, &group_size, &sym,
                          &mse))
        return NULL;
    w = as_array(w_obj, NPY_FLOAT32, 2, "w");
    if (w == NULL)
        return NULL;
    const int64_t out = PyArray_DIM(w, 0), in = PyArray_DIM(w, 1);
    const int64_t groups = group_size > 0 ? (in + group_size - 1) / group_size : 1;

    astro_quant_params params;
    astro_quant_params_init(&params, bits, group_size);
    params.sym = sym;
    params.mse = mse;

    codes = new_array(2, out, in, NPY_UINT8);
    scales = new_array(2, out, groups, NPY_FLOAT32);
    zeros = new_array(2, out, groups, NPY_FLOAT32);
    dequant = new_array(2, out, in, NPY_FLOAT32);
    if (!codes || !scales || !zeros || !dequant)
        goto done;

    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_rtn(&params, PyArray_DATA(w), out, in, PyArray_DATA(codes),
                       PyArray_DATA(scales), PyArray_DATA(zeros),
                       PyArray_DATA(dequant));
    Py_END_ALLOW_THREADS
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "rtn");
        goto done;
    }
    result = Py_BuildValue("(OOOO)", codes, scales, zeros, dequant);
done:
    Py_XDECREF(w);
    Py_XDECREF(codes);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    Py_XDECREF(dequant);
    return result;
}

static PyObject *py_gptq(PyObject *self, PyObject *args)
{
    PyObject *w_obj, *h_obj;
    int bits, sym, mse, act_order, static_groups, want_dequant;
    long long group_size, block_size;
    double damp, damp_max;
    PyArrayObject *w = NULL, *h = NULL, *codes = NULL, *scales = NULL,
                  *zeros = NULL, *g_idx = NULL, *dequant = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OOiLppppddLp:gptq", &w_obj, &h_obj, &bits,
                          &group_size, &sym, &mse, &act_order, &static_groups,
                          &damp, &damp_max, &block_size, &want_dequant))
        return NULL;
    w = as_array(w_obj, NPY_FLOAT32, 2, "w");
    if (w == NULL)
        goto done;
    h = as_array(h_obj, NPY_FLOAT32, 2, "h");
    if (h == NULL)
        goto done;
    const int64_t out = PyArray_DIM(w, 0), in = PyArray_DIM(w, 1);
    if (PyArray_DIM(h, 0) != in || PyArray_DIM(h, 1) != in) {
        PyErr_Format(PyExc_ValueError,
                     "h must be (%lld, %lld) to match w's in_features",
                     (long long)in, (long long)in);
        goto done;
    }
    const int64_t groups = group_size > 0 ? (in + group_size - 1) / group_size : 1;

    astro_gptq_params params;
    astro_gptq_params_init(&params, bits, group_size);
    params.quant.sym = sym;
    params.quant.mse = mse;
    params.act_order = act_order;
    params.static_groups = static_groups;
    params.damp = (float)damp;
    params.damp_max = (float)damp_max;
    params.block_size = block_size;

    codes = new_array(2, out, in, NPY_UINT8);
    scales = new_array(2, out, groups, NPY_FLOAT32);
    zeros = new_array(2, out, groups, NPY_FLOAT32);
    g_idx = new_array(1, in, 0, NPY_INT32);
    if (want_dequant)
        dequant = new_array(2, out, in, NPY_FLOAT32);
    if (!codes || !scales || !zeros || !g_idx || (want_dequant && !dequant))
        goto done;

    astro_gptq_stats stats = {0.0, 0.0, 0, 0};
    astro_cancel cancel;
    signal_poll poll;
    signal_poll_init(&poll, &cancel);
    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_gptq(&params, PyArray_DATA(w), PyArray_DATA(h), out, in,
                        PyArray_DATA(codes), PyArray_DATA(scales),
                        PyArray_DATA(zeros), PyArray_DATA(g_idx),
                        dequant ? PyArray_DATA(dequant) : NULL, &stats,
                        &cancel);
    Py_END_ALLOW_THREADS
    signal_poll_restore(&poll);
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "gptq");
        goto done;
    }
    result = Py_BuildValue(
        "(OOOOO{s:d,s:d,s:L,s:O})", codes, scales, zeros, g_idx,
        dequant ? (PyObject *)dequant : Py_None, "loss", stats.loss,
        "damp_used", stats.damp_used, "dead_columns",
        (long long)stats.dead_columns, "rtn_fallback",
        stats.rtn_fallback ? Py_True : Py_False);
done:
    Py_XDECREF(w);
    Py_XDECREF(h);
    Py_XDECREF(codes);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    Py_XDECREF(g_idx);
    Py_XDECREF(dequant);
    return result;
}

static PyObject *py_output_error(PyObject *self, PyObject *args)
{
    PyObject *w_obj, *q_obj, *h_obj;
    PyArrayObject *w = NULL, *q = NULL, *h = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OOO:output_error", &w_obj, &q_obj, &h_obj))
        return NULL;
    if (!(w = as_array(w_obj, NPY_FLOAT32, 2, "w")) ||
        !(q = as_array(q_obj, NPY_FLOAT32, 2, "q")) ||
        !(h = as_array(h_obj, NPY_FLOAT32, 2, "h")))
        goto done;
    const int64_t out = PyArray_DIM(w, 0), in = PyArray_DIM(w, 1);
    if (PyArray_DIM(q, 0) != out || PyArray_DIM(q, 1) != in ||
        PyArray_DIM(h, 0) != in || PyArray_DIM(h, 1) != in) {
        PyErr_SetString(PyExc_ValueError,
                        "w and q must be (out, in) and h (in, in)");
        goto done;
    }
    double error = 0.0;
    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_output_error(PyArray_DATA(w), PyArray_DATA(q),
                                PyArray_DATA(h), out, in, &error);
    Py_END_ALLOW_THREADS
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "output_error");
        goto done;
    }
    result = PyFloat_FromDouble(error);
done:
    Py_XDECREF(w);
    Py_XDECREF(q);
    Py_XDECREF(h);
    return result;
}

/* ------------------------------------------------------------------------ */
/* Packing                                                                   */
/* ------------------------------------------------------------------------ */

static npy_intp packed_words(npy_intp count, int bits)
{
    return (count * bits + 31) / 32;
}

static PyObject *py_pack_rows(PyObject *self, PyObject *args)
{
    PyObject *codes_obj;
    int bits;
    PyArrayObject *codes = NULL, *packed = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "Oi:pack_rows", &codes_obj, &bits))
        return NULL;
    if (!(codes = as_array(codes_obj, NPY_UINT8, 2, "codes")))
        return NULL;
    const npy_intp out = PyArray_DIM(codes, 0), in = PyArray_DIM(codes, 1);
    if (!(packed = new_array(2, packed_words(in, bits), out, NPY_INT32)))
        goto done;
    astro_status status = astro_pack_rows(PyArray_DATA(codes), out, in, bits,
                                          PyArray_DATA(packed));
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "pack_rows");
        goto done;
    }
    result = (PyObject *)packed;
    packed = NULL;
done:
    Py_XDECREF(codes);
    Py_XDECREF(packed);
    return result;
}

static PyObject *py_unpack_rows(PyObject *self, PyObject *args)
{
    PyObject *packed_obj;
    long long in;
    int bits;
    PyArrayObject *packed = NULL, *codes = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OLi:unpack_rows", &packed_obj, &in, &bits))
        return NULL;
    if (!(packed = as_array(packed_obj, NPY_INT32, 2, "qweight")))
        return NULL;
    const npy_intp out = PyArray_DIM(packed, 1);
    if (in < 0 || bits < 2 || bits > 8 ||
        PyArray_DIM(packed, 0) != packed_words(in, bits)) {
        PyErr_Format(PyExc_ValueError,
                     "qweight has %zd rows; %lld input features at %d bits "
                     "need %zd", (Py_ssize_t)PyArray_DIM(packed, 0), in, bits,
                     (Py_ssize_t)(bits >= 2 && bits <= 8 && in >= 0
                                      ? packed_words(in, bits) : 0));
        goto done;
    }
    if (!(codes = new_array(2, out, in, NPY_UINT8)))
        goto done;
    astro_status status = astro_unpack_rows(PyArray_DATA(packed), out, in,
                                            bits, PyArray_DATA(codes));
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "unpack_rows");
        goto done;
    }
    result = (PyObject *)codes;
    codes = NULL;
done:
    Py_XDECREF(packed);
    Py_XDECREF(codes);
    return result;
}

static PyObject *py_pack_zeros(PyObject *self, PyObject *args)
{
    PyObject *zeros_obj;
    int bits, offset;
    PyArrayObject *zeros = NULL, *packed = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "Oii:pack_zeros", &zeros_obj, &bits, &offset))
        return NULL;
    if (!(zeros = as_array(zeros_obj, NPY_FLOAT32, 2, "zeros")))
        return NULL;
    const npy_intp groups = PyArray_DIM(zeros, 0), out = PyArray_DIM(zeros, 1);
    if (!(packed = new_array(2, groups, packed_words(out, bits), NPY_INT32)))
        goto done;
    astro_status status = astro_pack_zeros(PyArray_DATA(zeros), groups, out,
                                           bits, offset, PyArray_DATA(packed));
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "pack_zeros");
        goto done;
    }
    result = (PyObject *)packed;
    packed = NULL;
done:
    Py_XDECREF(zeros);
    Py_XDECREF(packed);
    return result;
}

static PyObject *py_unpack_zeros(PyObject *self, PyObject *args)
{
    PyObject *packed_obj;
    long long out;
    int bits, offset;
    PyArrayObject *packed = NULL, *zeros = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OLii:unpack_zeros", &packed_obj, &out, &bits,
                          &offset))
        return NULL;
    if (!(packed = as_array(packed_obj, NPY_INT32, 2, "qzeros")))
        return NULL;
    const npy_intp groups = PyArray_DIM(packed, 0);
    if (out < 0 || bits < 2 || bits > 8 ||
        PyArray_DIM(packed, 1) != packed_words(out, bits)) {
        PyErr_Format(PyExc_ValueError,
                     "qzeros has %zd columns, which does not match %lld "
                     "output features at %d bits",
                     (Py_ssize_t)PyArray_DIM(packed, 1), out, bits);
        goto done;
    }
    if (!(zeros = new_array(2, groups, out, NPY_FLOAT32)))
        goto done;
    astro_status status = astro_unpack_zeros(PyArray_DATA(packed), groups, out,
                                             bits, offset, PyArray_DATA(zeros));
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "unpack_zeros");
        goto done;
    }
    result = (PyObject *)zeros;
    zeros = NULL;
done:
    Py_XDECREF(packed);
    Py_XDECREF(zeros);
    return result;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args)
{
    PyObject *codes_obj, *scales_obj, *zeros_obj, *g_idx_obj;
    PyArrayObject *codes = NULL, *scales = NULL, *zeros = NULL, *g_idx = NULL,
                  *w = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OOOO:dequantize", &codes_obj, &scales_obj,
                          &zeros_obj, &g_idx_obj))
        return NULL;
    if (!(codes = as_array(codes_obj, NPY_UINT8, 2, "codes")) ||
        !(scales = as_array(scales_obj, NPY_FLOAT32, 2, "scales")) ||
        !(zeros = as_array(zeros_obj, NPY_FLOAT32, 2, "zeros")) ||
        !(g_idx = as_array(g_idx_obj, NPY_INT32, 1, "g_idx")))
        goto done;
    const npy_intp out = PyArray_DIM(codes, 0), in = PyArray_DIM(codes, 1);
    const npy_intp groups = PyArray_DIM(scales, 1);
    if (PyArray_DIM(scales, 0) != out || PyArray_DIM(zeros, 0) != out ||
        PyArray_DIM(zeros, 1) != groups || PyArray_DIM(g_idx, 0) != in) {
        PyErr_SetString(PyExc_ValueError,
                        "codes must be (out, in), scales and zeros "
                        "(out, groups), g_idx (in,)");
        goto done;
    }
    if (!(w = new_array(2, out, in, NPY_FLOAT32)))
        goto done;
    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_dequantize(PyArray_DATA(codes), PyArray_DATA(scales),
                              PyArray_DATA(zeros), PyArray_DATA(g_idx), out,
                              in, groups, PyArray_DATA(w));
    Py_END_ALLOW_THREADS
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "dequantize (is every g_idx in [0, groups)?)");
        goto done;
    }
    result = (PyObject *)w;
    w = NULL;
done:
    Py_XDECREF(codes);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    Py_XDECREF(g_idx);
    Py_XDECREF(w);
    return result;
}

/* ------------------------------------------------------------------------ */
/* Astro regularization                                                      */
/* ------------------------------------------------------------------------ */

static PyObject *py_regularize(PyObject *self, PyObject *args)
{
    PyObject *w0_obj, *h_obj;
    double beta, tol;
    long long group_size;
    int uniform_alpha, max_iterations, solver, power_iterations, record;
    PyArrayObject *w0 = NULL, *h = NULL, *w = NULL, *alpha = NULL,
                  *objective = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "OOdLpiidip:regularize", &w0_obj, &h_obj,
                          &beta, &group_size, &uniform_alpha, &max_iterations,
                          &solver, &tol, &power_iterations, &record))
        return NULL;
    if (!(w0 = as_array(w0_obj, NPY_FLOAT32, 2, "w0")) ||
        !(h = as_array(h_obj, NPY_FLOAT32, 2, "h")))
        goto done;
    const int64_t out = PyArray_DIM(w0, 0), in = PyArray_DIM(w0, 1);
    if (PyArray_DIM(h, 0) != in || PyArray_DIM(h, 1) != in) {
        PyErr_SetString(PyExc_ValueError, "h must be (in, in) to match w0");
        goto done;
    }
    if (max_iterations < 0) {
        PyErr_Format(PyExc_ValueError, "iterations must be >= 0, got %d",
                     max_iterations);
        goto done;
    }
    const int64_t groups = group_size > 0 ? (in + group_size - 1) / group_size : 1;

    astro_regularize_params params;
    astro_regularize_params_init(&params);
    params.beta = beta;
    params.group_size = group_size;
    params.uniform_alpha = uniform_alpha;
    params.max_iterations = max_iterations;
    params.solver = (astro_solver)solver;
    params.tol = tol;
    params.power_iterations = power_iterations;

    w = new_array(2, out, in, NPY_FLOAT32);
    alpha = new_array(1, groups, 0, NPY_FLOAT32);
    if (record)
        objective = new_array(1, (npy_intp)max_iterations + 1, 0, NPY_FLOAT64);
    if (!w || !alpha || (record && !objective))
        goto done;

    astro_regularize_stats stats;
    astro_cancel cancel;
    signal_poll poll;
    signal_poll_init(&poll, &cancel);
    astro_status status;
    Py_BEGIN_ALLOW_THREADS
    status = astro_regularize(&params, PyArray_DATA(w0), PyArray_DATA(h), out,
                              in, PyArray_DATA(w), PyArray_DATA(alpha),
                              objective ? PyArray_DATA(objective) : NULL,
                              &stats, &cancel);
    Py_END_ALLOW_THREADS
    signal_poll_restore(&poll);
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "regularize");
        goto done;
    }
    result = Py_BuildValue(
        "(OOO{s:i,s:i,s:i,s:d,s:d,s:d,s:d})", w, alpha,
        objective ? (PyObject *)objective : Py_None, "iterations",
        stats.iterations, "restarts", stats.restarts, "stop_reason", (int)stats.stop_reason, "lambda_max",
        stats.lambda_max, "objective_initial", stats.objective_initial,
        "objective_final", stats.objective_final, "output_change",
        stats.output_change);
done:
    Py_XDECREF(w0);
    Py_XDECREF(h);
    Py_XDECREF(w);
    Py_XDECREF(alpha);
    Py_XDECREF(objective);
    return result;
}

static PyObject *py_project_l1_ball(PyObject *self, PyObject *args)
{
    PyObject *v_obj;
    double radius;
    PyArrayObject *v = NULL, *projected = NULL;
    float *scratch = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "Od:project_l1_ball", &v_obj, &radius))
        return NULL;
    if (!(v = as_array(v_obj, NPY_FLOAT32, 1, "v")))
        return NULL;
    const npy_intp n = PyArray_DIM(v, 0);
    if (!(radius >= 0.0)) {
        PyErr_Format(PyExc_ValueError, "radius must be >= 0, got %g", radius);
        goto done;
    }
    if (!(projected = new_array(1, n, 0, NPY_FLOAT32)))
        goto done;
    scratch = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    astro_status status = astro_project_l1_ball(
        PyArray_DATA(v), n, (float)radius, PyArray_DATA(projected), scratch);
    if (status != ASTRO_STATUS_OK) {
        raise_status(status, "project_l1_ball");
        goto done;
    }
    result = (PyObject *)projected;
    projected = NULL;
done:
    PyMem_Free(scratch);
    Py_XDECREF(v);
    Py_XDECREF(projected);
    return result;
}

/* ------------------------------------------------------------------------ */
/* Module                                                                    */
/* ------------------------------------------------------------------------ */

static PyMethodDef core_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS,
     "set_num_threads(n): threads for OpenBLAS and the core's loops."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads() -> int"},
    {"hessian_update", py_hessian_update, METH_VARARGS,
     "hessian_update(h, num_samples, x) -> num_samples; updates h's upper "
     "triangle in place."},
    {"hessian_symmetrize", py_hessian_symmetrize, METH_VARARGS,
     "hessian_symmetrize(h): copies the upper triangle onto the lower."},
    {"rtn", py_rtn, METH_VARARGS,
     "rtn(w, bits, group_size, sym, mse) -> (codes, scales, zeros, dequant)"},
    {"gptq", py_gptq, METH_VARARGS,
     "gptq(w, h, bits, group_size, sym, mse, act_order, static_groups, damp, "
     "damp_max, block_size, want_dequant) -> (codes, scales, zeros, g_idx, "
     "dequant or None, stats)"},
    {"output_error", py_output_error, METH_VARARGS,
     "output_error(w, q, h) -> tr((w-q) h (w-q)^T) / tr(w h w^T)"},
    {"pack_rows", py_pack_rows, METH_VARARGS,
     "pack_rows(codes, bits) -> qweight (int32, packed along the input)"},
    {"unpack_rows", py_unpack_rows, METH_VARARGS,
     "unpack_rows(qweight, in_features, bits) -> codes"},
    {"pack_zeros", py_pack_zeros, METH_VARARGS,
     "pack_zeros(zeros (groups, out), bits, offset) -> qzeros"},
    {"unpack_zeros", py_unpack_zeros, METH_VARARGS,
     "unpack_zeros(qzeros, out_features, bits, offset) -> zeros (groups, out)"},
    {"dequantize", py_dequantize, METH_VARARGS,
     "dequantize(codes, scales, zeros, g_idx) -> float32 weights"},
    {"regularize", py_regularize, METH_VARARGS,
     "regularize(w0, h, beta, group_size, uniform_alpha, max_iterations, "
     "solver, tol, power_iterations, record_objective) -> (w, alpha, "
     "objective or None, stats)"},
    {"project_l1_ball", py_project_l1_ball, METH_VARARGS,
     "project_l1_ball(v, radius) -> projection of v onto the L1 ball"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "astro._core",
    "C core of astro-ptq: Hessian, GPTQ, RTN, Astro, packing.", -1,
    core_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL)
        return NULL;
    NumericalError = PyErr_NewExceptionWithDoc(
        "astro.NumericalError",
        "A factorization or result failed numerically (for example a Hessian "
        "that stays indefinite at the largest damping).",
        PyExc_ArithmeticError, NULL);
    if (NumericalError == NULL ||
        PyModule_AddObjectRef(module, "NumericalError", NumericalError) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
