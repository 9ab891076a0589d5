/*
 * fuzz_core.c - fuzzes the C core's entry points with arbitrary sizes,
 * options and values (NaN, Inf, denormals, huge numbers included).
 *
 * One input is a byte string: the first byte picks the entry point, the
 * next bytes pick sizes and options, and every later pair of bytes decodes
 * to one float. Any byte string is valid, so the same function serves
 * libFuzzer (built with -DASTRO_LIBFUZZER) and the bounded driver in main()
 * that the Makefile runs under AddressSanitizer and UBSan in CI.
 *
 * Besides "no crash, no leak, no undefined behaviour", every call must
 * return a known status, leave no core allocation live, and on success
 * give results that satisfy the contract: codes in [0, maxq], g_idx in
 * range, dequantized values equal to scale * (code - zero), and finite
 * outputs whenever the inputs were finite.
 *
 * Driver usage:
 *   fuzz_core [--seconds S] [--iterations N] [--seed K] [--moderate] [FILE...]
 * Files are replayed as single inputs (a crash reproducer, say).
 * --moderate decodes no NaN, Inf or value above 1e3 in magnitude, to look
 * past a known bug with extreme values.
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc_hook.h"
#include "astro.h"
#include "test_util.h"

/* ------------------------------------------------------------------------ */
/* Decoding bytes                                                            */
/* ------------------------------------------------------------------------ */

typedef struct byte_reader {
    const uint8_t *data;
    size_t size, position;
    int saw_non_finite;  /* a decoded float was NaN or Inf */
} byte_reader;

static unsigned take_byte(byte_reader *reader)
{
    return reader->position < reader->size ? reader->data[reader->position++]
                                           : 0u;
}

static const float SPECIAL_VALUES[] = {
    0.0f, -0.0f, 1.0f, -1.0f, 1e-40f, -1e-40f, 0x1p-149f, FLT_MIN, 1e3f,
    -1e3f, 1e30f, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, NAN,
};
enum { SPECIAL_COUNT = sizeof SPECIAL_VALUES / sizeof SPECIAL_VALUES[0] };

/*
 * Two bytes per float: a tag byte below 224 gives a small value
 * (second byte - 128) / 16 times a power of two chosen by the tag, so most
 * inputs look like weights; other tags pick a special value.
 */
/* Set by --moderate: values stay finite and at most 1e3 in magnitude. */
static int moderate_only = 0;

static float take_float(byte_reader *reader)
{
    unsigned tag = take_byte(reader);
    unsigned value = take_byte(reader);
    float x;
    if (tag < 224)
        x = ldexpf(((float)value - 128.0f) / 16.0f, (int)(tag % 16) - 8);
    else
        x = SPECIAL_VALUES[(tag - 224) % SPECIAL_COUNT];
    if (moderate_only && !(fabsf(x) <= 1e3f))
        x = copysignf(1e3f, x);
    if (!isfinite(x))
        reader->saw_non_finite = 1;
    return x;
}

static void take_floats(byte_reader *reader, float *x, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        x[i] = take_float(reader);
}

static int64_t pick(byte_reader *reader, const int64_t *choices, int count)
{
    return choices[take_byte(reader) % (unsigned)count];
}

/* Option tables: mostly valid choices, a few invalid ones per table. */
static const int64_t GROUP_SIZES[] = {-1, -1, 1, 2, 3, 4, 8, 16, 32, 0, -2};
enum { GROUP_CHOICES = sizeof GROUP_SIZES / sizeof GROUP_SIZES[0] };
static const int64_t BLOCK_SIZES[] = {128, 1, 3, 16, 128, 5, 0, -1};
static const float DAMPS[] = {0.01f, 0.01f, 0.0f, 1e-6f, 1.0f, -0.01f, NAN};

/* Bits 2..8 are valid; 0, 1 and 9 test the argument checks. */
static int take_bits(byte_reader *reader)
{
    static const int bits[] = {2, 3, 4, 8, 2, 3, 4, 5, 6, 7, 0, 1, 9};
    return bits[take_byte(reader) % (sizeof bits / sizeof bits[0])];
}

static void take_quant_params(byte_reader *reader, astro_quant_params *params)
{
    astro_quant_params_init(params, take_bits(reader),
                            pick(reader, GROUP_SIZES, GROUP_CHOICES));
    unsigned flags = take_byte(reader);
    params->sym = flags & 1;
    params->mse = (flags >> 1) & 1;
    if (flags & 4)
        params->mse_grid = (int)(take_byte(reader) % 8);
}

static int bits_valid(int bits)
{
    return bits >= 2 && bits <= 8;
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                              */
/* ------------------------------------------------------------------------ */

/* Calls per entry point and status, printed at the end of a run. */
enum { TALLY_ENTRIES = 16 };
static struct {
    const char *entry;
    long count[ASTRO_STATUS_COUNT_];
} tally[TALLY_ENTRIES];

static void check_status_known(const char *entry, astro_status status)
{
    CHECK((int)status >= 0 && status < ASTRO_STATUS_COUNT_,
          "%s returned unknown status %d", entry, (int)status);
    if ((int)status < 0 || status >= ASTRO_STATUS_COUNT_)
        return;
    for (int i = 0; i < TALLY_ENTRIES; i++) {
        if (tally[i].entry == NULL)
            tally[i].entry = entry;
        if (strcmp(tally[i].entry, entry) == 0) {
            tally[i].count[status]++;
            return;
        }
    }
}

static void print_tally(void)
{
    printf("%-26s %9s %9s %9s %9s %9s %9s %9s\n", "entry point", "ok",
           "invalid", "oom", "not_pd", "lapack", "nonfinite", "interrupt");
    for (int i = 0; i < TALLY_ENTRIES && tally[i].entry != NULL; i++) {
        printf("%-26s", tally[i].entry);
        for (int s = 0; s < ASTRO_STATUS_COUNT_; s++)
            printf(" %9ld", tally[i].count[s]);
        printf("\n");
    }
}

static void fuzz_quantizer(byte_reader *reader)
{
    astro_quant_params params;
    take_quant_params(reader, &params);
    int64_t rows = take_byte(reader) % 6;
    int64_t count = take_byte(reader) % 20;
    int64_t stride = rows + take_byte(reader) % 3;
    float *x = test_floats(count * stride);
    take_floats(reader, x, count * stride);
    float *scale = test_floats(rows), *zero = test_floats(rows);
    astro_status status = astro_quant_find_params(&params, x, count, rows,
                                                  stride, scale, zero);
    check_status_known("astro_quant_find_params", status);
    if (status != ASTRO_STATUS_OK || count == 0)
        return;
    CHECK(bits_valid(params.bits), "bits %d accepted", params.bits);
    uint8_t *code = test_bytes(rows);
    float *q = test_floats(rows);
    for (int64_t j = 0; j < count; j++) {
        astro_quant_line(params.bits, x + j * stride, scale, zero, rows, code,
                         q);
        for (int64_t r = 0; r < rows; r++)
            CHECK(code[r] <= test_maxq(params.bits), "code %d above maxq",
                  code[r]);
    }
    if (!reader->saw_non_finite)
        CHECK(all_finite(scale, rows) && all_finite(zero, rows),
              "finite input, status OK, non-finite scale or zero");
}

static void fuzz_rtn(byte_reader *reader)
{
    astro_quant_params params;
    take_quant_params(reader, &params);
    int64_t out = take_byte(reader) % 5, in = take_byte(reader) % 40;
    float *w = test_floats(out * in);
    take_floats(reader, w, out * in);
    int64_t groups = params.group_size > 0
                         ? (in + params.group_size - 1) / params.group_size : 1;
    if (params.group_size == 0 || params.group_size < -1)
        groups = 1;
    uint8_t *codes = test_bytes(out * in);
    float *scales = test_floats(out * groups), *zeros = test_floats(out * groups);
    float *dequant = test_floats(out * in);
    astro_status status = astro_rtn(&params, w, out, in, codes, scales, zeros,
                                    dequant);
    check_status_known("astro_rtn", status);
    if (status != ASTRO_STATUS_OK)
        return;
    CHECK(bits_valid(params.bits) && (params.group_size > 0 ||
                                      params.group_size == -1),
          "bits %d group %lld accepted", params.bits,
          (long long)params.group_size);
    /* With in == 0 there is no group to fill: scales may stay unwritten. */
    if (reader->saw_non_finite || in == 0)
        return;
    int32_t *g_idx = test_ints(in);
    for (int64_t c = 0; c < in; c++)
        g_idx[c] = (int32_t)(params.group_size > 0 ? c / params.group_size : 0);
    char label[128];
    snprintf(label, sizeof label, "rtn bits %d group %lld sym %d mse %d "
             "grid %d out %lld in %lld", params.bits,
             (long long)params.group_size, params.sym, params.mse,
             params.mse_grid, (long long)out, (long long)in);
    check_quantized_layer(label, params.bits, out, in, groups, codes, scales,
                          zeros, g_idx, dequant);
}

/* Builds h (in x in) from up to max_tokens - 1 decoded token rows. */
static astro_status take_hessian(byte_reader *reader, int64_t in,
                                 unsigned max_tokens, float *h)
{
    int64_t tokens = take_byte(reader) % max_tokens;
    float *x = test_floats(tokens * in);
    take_floats(reader, x, tokens * in);
    for (int64_t i = 0; i < in * in; i++)
        h[i] = 0.0f;
    int64_t n = 0;
    astro_status status = astro_hessian_update(h, in, &n, x, tokens, in);
    if (status == ASTRO_STATUS_OK)
        status = astro_hessian_symmetrize(h, in);
    return status;
}

static int cancel_after(void *context)
{
    int *remaining = context;
    return (*remaining)-- <= 0;
}

static void fuzz_gptq(byte_reader *reader)
{
    astro_gptq_params params;
    astro_quant_params quant;
    take_quant_params(reader, &quant);
    astro_gptq_params_init(&params, quant.bits, quant.group_size);
    params.quant = quant;
    params.block_size = pick(reader, BLOCK_SIZES, 8);
    params.damp = DAMPS[take_byte(reader) % 7];
    unsigned flags = take_byte(reader);
    params.act_order = flags & 1;
    params.static_groups = (flags >> 1) & 1;
    if (flags & 4)
        params.damp_max = params.damp;
    int64_t out = take_byte(reader) % 5, in = take_byte(reader) % 40;

    /* H from decoded X (positive semidefinite) or raw decoded values. */
    float *w = test_floats(out * in);
    take_floats(reader, w, out * in);
    float *h = test_floats(in * in);
    if (flags & 8)
        take_floats(reader, h, in * in);
    else if (take_hessian(reader, in, 30, h) != ASTRO_STATUS_OK)
        return;
    int remaining = (int)(take_byte(reader) % 4);
    astro_cancel cancel = {cancel_after, &remaining};

    int64_t groups = quant.group_size > 0
                         ? (in + quant.group_size - 1) / quant.group_size : 1;
    uint8_t *codes = test_bytes(out * in);
    float *scales = test_floats(out * groups), *zeros = test_floats(out * groups);
    float *dequant = test_floats(out * in);
    int32_t *g_idx = test_ints(in);
    astro_gptq_stats stats;
    astro_status status = astro_gptq(&params, w, h, out, in, codes, scales,
                                     zeros, g_idx, dequant, &stats,
                                     flags & 16 ? &cancel : NULL);
    check_status_known("astro_gptq", status);
    if (status != ASTRO_STATUS_OK)
        return;
    CHECK(bits_valid(quant.bits) && params.block_size > 0 &&
          params.damp >= 0.0f, "invalid options accepted: bits %d block %lld "
          "damp %g", quant.bits, (long long)params.block_size, params.damp);
    if (reader->saw_non_finite || in == 0)
        return;
    char label[160];
    snprintf(label, sizeof label, "gptq bits %d group %lld sym %d mse %d "
             "block %lld damp %g act_order %d static %d out %lld in %lld",
             quant.bits, (long long)quant.group_size, quant.sym, quant.mse,
             (long long)params.block_size, params.damp, params.act_order,
             params.static_groups, (long long)out, (long long)in);
    check_quantized_layer(label, quant.bits, out, in, groups, codes, scales,
                          zeros, g_idx, dequant);
    CHECK(all_finite(dequant, out * in) && isfinite(stats.loss),
          "%s: finite input, status OK, non-finite result", label);
}

static void fuzz_pack(byte_reader *reader)
{
    int bits = take_bits(reader);
    int64_t out = take_byte(reader) % 7, in = take_byte(reader) % 70;
    int64_t words = (in * (bits > 0 ? bits : 1) + 31) / 32;
    uint8_t *codes = test_bytes(out * in);
    unsigned mask = take_byte(reader) & 1 ? 0xFFu : (1u << (bits & 7)) - 1u;
    for (int64_t i = 0; i < out * in; i++)
        codes[i] = (uint8_t)(take_byte(reader) & mask);
    int32_t *qweight = test_ints(words * out);
    astro_status status = astro_pack_rows(codes, out, in, bits, qweight);
    check_status_known("astro_pack_rows", status);
    if (status == ASTRO_STATUS_OK) {
        CHECK(bits_valid(bits), "pack_rows accepted bits %d", bits);
        uint8_t *back = test_bytes(out * in);
        CHECK_STATUS(astro_unpack_rows(qweight, out, in, bits, back),
                     ASTRO_STATUS_OK);
        long differ = 0;
        for (int64_t i = 0; i < out * in; i++)
            differ += codes[i] <= test_maxq(bits) && back[i] != codes[i];
        CHECK(differ == 0, "%ld codes changed in a pack round trip", differ);
    }

    /* Unpack arbitrary words: codes must stay in range. */
    for (int64_t i = 0; i < words * out; i++)
        qweight[i] = (int32_t)(take_byte(reader) * 0x01010101u);
    uint8_t *unpacked = test_bytes(out * in);
    status = astro_unpack_rows(qweight, out, in, bits, unpacked);
    check_status_known("astro_unpack_rows", status);
    for (int64_t i = 0; status == ASTRO_STATUS_OK && i < out * in; i++)
        CHECK(unpacked[i] <= test_maxq(bits), "unpacked code %d", unpacked[i]);

    int64_t groups = take_byte(reader) % 4;
    int offset = (int)(take_byte(reader) % 3);
    int64_t zero_words = (out * (bits > 0 ? bits : 1) + 31) / 32;
    float *zeros = test_floats(groups * out);
    take_floats(reader, zeros, groups * out);
    int32_t *qzeros = test_ints(groups * zero_words);
    status = astro_pack_zeros(zeros, groups, out, bits, offset, qzeros);
    check_status_known("astro_pack_zeros", status);
    if (status == ASTRO_STATUS_OK) {
        float *back = test_floats(groups * out);
        status = astro_unpack_zeros(qzeros, groups, out, bits, offset, back);
        check_status_known("astro_unpack_zeros", status);
        for (int64_t i = 0; status == ASTRO_STATUS_OK && i < groups * out; i++)
            CHECK(isfinite(back[i]) && back[i] >= 0.0f &&
                  back[i] <= (float)test_maxq(bits), "unpacked zero %g",
                  back[i]);
    }
}

static void fuzz_dequantize(byte_reader *reader)
{
    int64_t out = take_byte(reader) % 5, in = take_byte(reader) % 30;
    int64_t groups = (int64_t)(take_byte(reader) % 6) - 1;
    int64_t buffer_groups = groups > 0 ? groups : 0;
    uint8_t *codes = test_bytes(out * in);
    for (int64_t i = 0; i < out * in; i++)
        codes[i] = (uint8_t)take_byte(reader);
    float *scales = test_floats(out * buffer_groups);
    float *zeros = test_floats(out * buffer_groups);
    take_floats(reader, scales, out * buffer_groups);
    take_floats(reader, zeros, out * buffer_groups);
    int32_t *g_idx = test_ints(in);
    /* Mostly valid group indices, some outside [0, groups). */
    for (int64_t c = 0; c < in; c++) {
        unsigned b = take_byte(reader);
        g_idx[c] = b < 8 ? (int32_t)b - 2
                         : (int32_t)(b % (unsigned)(groups > 0 ? groups : 1));
    }
    float *w = test_floats(out * in);
    astro_status status = astro_dequantize(codes, scales, zeros, g_idx, out, in,
                                           groups, w);
    check_status_known("astro_dequantize", status);
    if (status == ASTRO_STATUS_OK && out > 0)
        for (int64_t c = 0; c < in; c++)
            CHECK(g_idx[c] >= 0 && g_idx[c] < groups, "g_idx %d accepted with "
                  "%lld groups", g_idx[c], (long long)groups);
}

static void fuzz_hessian(byte_reader *reader)
{
    int64_t in = take_byte(reader) % 20;
    int64_t stride = in + take_byte(reader) % 3;
    int64_t tokens = take_byte(reader) % 12;
    float *x = test_floats(tokens * stride);
    take_floats(reader, x, tokens * stride);
    float *h = test_floats(in * in);
    for (int64_t i = 0; i < in * in; i++)
        h[i] = 0.0f;
    int64_t n = take_byte(reader) % 3;
    astro_status status = astro_hessian_update(h, in, &n, x, tokens, stride);
    check_status_known("astro_hessian_update", status);
    if (status == ASTRO_STATUS_OK)
        check_status_known("astro_hessian_symmetrize",
                           astro_hessian_symmetrize(h, in));

    float *w = test_floats(3 * in), *q = test_floats(3 * in);
    take_floats(reader, w, 3 * in);
    take_floats(reader, q, 3 * in);
    double error;
    check_status_known("astro_output_error",
                       astro_output_error(w, q, h, 3, in, &error));
}

static void fuzz_regularize(byte_reader *reader)
{
    astro_regularize_params params;
    astro_regularize_params_init(&params);
    params.group_size = pick(reader, GROUP_SIZES, GROUP_CHOICES);
    params.max_iterations = (int)(take_byte(reader) % 6) - 1;
    params.solver = (astro_solver)(take_byte(reader) % 3);
    params.uniform_alpha = take_byte(reader) & 1;
    params.beta = (double)take_float(reader);
    params.tol = take_byte(reader) & 1 ? 0.0 : 1e-4;
    int64_t out = take_byte(reader) % 4, in = take_byte(reader) % 20;
    float *w0 = test_floats(out * in);
    take_floats(reader, w0, out * in);
    float *h = test_floats(in * in);
    if (take_hessian(reader, in, 25, h) != ASTRO_STATUS_OK)
        return;
    int64_t groups = params.group_size > 0
                         ? (in + params.group_size - 1) / params.group_size : 1;
    float *w = test_floats(out * in);
    float *alpha = test_floats(groups);
    int iterations = params.max_iterations > 0 ? params.max_iterations : 0;
    double *objective = test_doubles(iterations + 1);
    astro_regularize_stats stats;
    astro_status status = astro_regularize(&params, w0, h, out, in, w, alpha,
                                           objective, &stats, NULL);
    check_status_known("astro_regularize", status);
    if (status == ASTRO_STATUS_OK && !reader->saw_non_finite)
        CHECK(all_finite(w, out * in), "finite input, status OK, non-finite "
              "regularized weights");
}

static void fuzz_project_l1_ball(byte_reader *reader)
{
    int64_t n = take_byte(reader) % 40;
    float radius = fabsf(take_float(reader));
    float *v = test_floats(n), *p = test_floats(n), *scratch = test_floats(n);
    take_floats(reader, v, n);
    if (reader->saw_non_finite || !isfinite(radius))
        return;
    astro_project_l1_ball(v, n, radius, p, scratch);
    double norm = 0.0, max_abs = 0.0;
    for (int64_t i = 0; i < n; i++) {
        norm += fabs(p[i]);
        max_abs = fmax(max_abs, fabs(v[i]));
    }
    /* Each p_i = |v_i| - mu is rounded in float32 at the scale of |v_i|, so
     * with entries far above the radius the sum may exceed it by n ulps of
     * max |v|. */
    const double slack = (double)n * max_abs * FLT_EPSILON;
    CHECK(all_finite(p, n) && norm <= (double)radius * (1 + 1e-5) + slack + 1e-30,
          "projection has |p|_1 = %g > radius %g",
          norm, radius);
}

static void (*const ENTRY_POINTS[])(byte_reader *) = {
    fuzz_quantizer, fuzz_rtn, fuzz_gptq, fuzz_gptq, fuzz_pack,
    fuzz_dequantize, fuzz_hessian, fuzz_regularize, fuzz_project_l1_ball,
};
enum { ENTRY_COUNT = sizeof ENTRY_POINTS / sizeof ENTRY_POINTS[0] };

/*
 * Runs one input. With the allocation hook linked, a byte of the input may
 * also make the n-th core allocation fail, which reaches the error paths.
 */
static void run_one(const uint8_t *data, size_t size)
{
    byte_reader reader = {data, size, 0, 0};
    unsigned entry = take_byte(&reader);
    unsigned fail = take_byte(&reader);
    int64_t live_before = astro_test_alloc_live();
    astro_test_alloc_fail_from(fail < 32 ? (int64_t)fail : -1);
    ENTRY_POINTS[entry % ENTRY_COUNT](&reader);
    astro_test_alloc_fail_from(-1);
    CHECK(astro_test_alloc_live() == live_before, "entry %u: %lld core "
          "blocks leaked", entry % ENTRY_COUNT,
          (long long)(astro_test_alloc_live() - live_before));
    test_free_all();
}

#ifdef ASTRO_LIBFUZZER

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    test_failed_checks = 0;
    run_one(data, size);
    if (test_failed_checks != 0)
        abort();
    return 0;
}

#else

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

/* The input being run, for the signal handler below. */
static const uint8_t *current_data;
static size_t current_size;

/*
 * Saves the input being run when a sanitizer aborts (abort_on_error=1 makes
 * both AddressSanitizer and UBSan raise SIGABRT) or the process crashes.
 * Only async-signal-safe calls are used.
 */
static void save_input_on_signal(int signal_number)
{
    int file = open("fuzz_core_failure.bin", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (file >= 0) {
        ssize_t written = write(file, current_data, current_size);
        (void)written;
        close(file);
    }
    static const char note[] = "failing input written to fuzz_core_failure.bin\n";
    ssize_t printed = write(2, note, sizeof note - 1);
    (void)printed;
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

/* Writes the failing input where a later run can replay it. */
static void save_input(const uint8_t *data, size_t size)
{
    const char *path = "fuzz_core_failure.bin";
    FILE *file = fopen(path, "wb");
    if (file != NULL) {
        fwrite(data, 1, size, file);
        fclose(file);
        fprintf(stderr, "failing input written to %s\n", path);
    }
}

static int replay_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    uint8_t data[1 << 16];
    size_t size = fread(data, 1, sizeof data, file);
    fclose(file);
    test_failed_checks = 0;
    run_one(data, size);
    printf("%s: %s\n", path, test_failed_checks ? "FAIL" : "ok");
    return test_failed_checks != 0;
}

/*
 * Random inputs: lengths up to 4 KiB, bytes biased toward small values and
 * the special-value tags so the decoded floats mix ordinary and extreme
 * numbers.
 */
static size_t random_input(test_rng *rng, uint8_t *data, size_t capacity)
{
    size_t size = (size_t)test_rng_below(rng, (int64_t)capacity);
    int special_rate = (int)test_rng_below(rng, 40);
    for (size_t i = 0; i < size; i++) {
        uint64_t r = test_rng_next(rng);
        if (i % 2 == 0 && (int)(r % 1000) < special_rate)
            data[i] = (uint8_t)(224 + (r >> 10) % SPECIAL_COUNT);
        else if (i % 2 == 0)
            data[i] = (uint8_t)(8 + (r >> 10) % 3);
        else
            data[i] = (uint8_t)(r >> 20);
    }
    /* The leading option bytes are uniform. */
    for (size_t i = 0; i < size && i < 16; i++)
        data[i] = (uint8_t)(test_rng_next(rng) >> 13);
    return size;
}

int main(int argc, char **argv)
{
    double seconds = 30.0;
    long iterations = -1;
    uint64_t seed = 1;
    int replayed = 0, failures = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
            iterations = atol(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--moderate") == 0)
            moderate_only = 1;
        else {
            failures += replay_file(argv[i]);
            replayed++;
        }
    }
    if (replayed > 0)
        return failures != 0;

    test_rng rng;
    test_rng_seed(&rng, seed);
    static uint8_t data[4096];
    current_data = data;
    signal(SIGABRT, save_input_on_signal);
    signal(SIGSEGV, save_input_on_signal);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long done = 0;
    for (;;) {
        if (iterations >= 0 && done >= iterations)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = (double)(now.tv_sec - start.tv_sec) +
                         1e-9 * (double)(now.tv_nsec - start.tv_nsec);
        if (iterations < 0 && elapsed >= seconds)
            break;
        size_t size = random_input(&rng, data, sizeof data);
        current_size = size;
        test_failed_checks = 0;
        run_one(data, size);
        done++;
        if (test_failed_checks != 0) {
            fprintf(stderr, "input %ld (seed %llu) failed\n", done - 1,
                    (unsigned long long)seed);
            save_input(data, size);
            return 1;
        }
    }
    print_tally();
    printf("fuzz_core: %ld inputs, seed %llu, no failures\n", done,
           (unsigned long long)seed);
    return 0;
}

#endif
