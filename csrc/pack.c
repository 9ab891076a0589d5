/*
 * pack.c - GPTQ checkpoint packing, unpacking and dequantization.
 *
 * Both packed tensors are continuous little-endian bit streams of `bits`-wide
 * values cut into 32-bit words, so 3-bit values cross word boundaries (32
 * values fill exactly 3 words) and 2/4/8-bit values never do:
 *
 *   qweight  (ceil(in * bits / 32)) x out: the stream of column r runs down
 *            the input dimension; value c sits at bits [c*bits, c*bits+bits)
 *            of column r.
 *   qzeros   groups x ceil(out * bits / 32): the stream of row g runs along
 *            the output dimension.
 *
 *     word:   |        0         |        1         |        2         |
 *     3-bit:  v0 v1 ... v9 v10(lo2) | v10(hi1) v11 ... v20 v21(lo1) | ...
 *
 * Unused high bits of the last word are zero.
 */
#include <string.h>

#include "astro.h"
#include "internal.h"

static int64_t words_for(int64_t count, int bits)
{
    return (count * bits + 31) / 32;
}

static int valid_bits(int bits)
{
    return bits >= 2 && bits <= 8;
}

/* ORs `value` (bits wide) into the stream at value index `index`; the stream
 * word w of the current line is at base[w * word_stride]. */
static inline void stream_put(uint32_t *base, int64_t word_stride,
                              int64_t index, int bits, uint32_t value)
{
    const int64_t bit = index * bits;
    const int64_t word = bit / 32;
    const int shift = (int)(bit % 32);
    base[word * word_stride] |= value << shift;
    if (shift + bits > 32)
        base[(word + 1) * word_stride] |= value >> (32 - shift);
}

static inline uint32_t stream_get(const uint32_t *base, int64_t word_stride,
                                  int64_t index, int bits)
{
    const uint32_t mask = (1u << bits) - 1u;
    const int64_t bit = index * bits;
    const int64_t word = bit / 32;
    const int shift = (int)(bit % 32);
    uint32_t value = base[word * word_stride] >> shift;
    if (shift + bits > 32)
        value |= base[(word + 1) * word_stride] << (32 - shift);
    return value & mask;
}

astro_status astro_pack_rows(const uint8_t *codes, int64_t out, int64_t in,
                             int bits, int32_t *qweight)
{
    if (!valid_bits(bits) || out < 0 || in < 0 ||
        (out * in > 0 && (codes == NULL || qweight == NULL)))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    const uint32_t mask = (1u << bits) - 1u;
    uint32_t *dst = (uint32_t *)qweight;

    memset(dst, 0, (size_t)(words_for(in, bits) * out) * sizeof(uint32_t));
    for (int64_t r = 0; r < out; r++)
        for (int64_t c = 0; c < in; c++)
            stream_put(dst + r, out, c, bits, codes[r * in + c] & mask);
    return ASTRO_STATUS_OK;
}

astro_status astro_unpack_rows(const int32_t *qweight, int64_t out,
                               int64_t in, int bits, uint8_t *codes)
{
    if (!valid_bits(bits) || out < 0 || in < 0 ||
        (out * in > 0 && (codes == NULL || qweight == NULL)))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    const uint32_t *src = (const uint32_t *)qweight;

    for (int64_t r = 0; r < out; r++)
        for (int64_t c = 0; c < in; c++)
            codes[r * in + c] = (uint8_t)stream_get(src + r, out, c, bits);
    return ASTRO_STATUS_OK;
}

astro_status astro_pack_zeros(const float *zeros, int64_t groups, int64_t out,
                              int bits, int offset, int32_t *qzeros)
{
    if (!valid_bits(bits) || groups < 0 || out < 0 ||
        (groups * out > 0 && (zeros == NULL || qzeros == NULL)))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    const int64_t words = words_for(out, bits);
    const uint32_t mask = (1u << bits) - 1u;
    uint32_t *dst = (uint32_t *)qzeros;

    memset(dst, 0, (size_t)(groups * words) * sizeof(uint32_t));
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t r = 0; r < out; r++) {
            const float z = zeros[g * out + r];
            if (!(z >= 0.0f && z <= (float)mask))
                return ASTRO_STATUS_INVALID_ARGUMENT;
            /* Modulo 2^bits: v1's zero - 1 wraps 0 to maxq, as the two's
             * complement -1 masked to `bits` bits does. */
            const uint32_t value = ((uint32_t)z - (uint32_t)offset) & mask;
            stream_put(dst + g * words, 1, r, bits, value);
        }
    }
    return ASTRO_STATUS_OK;
}

astro_status astro_unpack_zeros(const int32_t *qzeros, int64_t groups,
                                int64_t out, int bits, int offset,
                                float *zeros)
{
    if (!valid_bits(bits) || groups < 0 || out < 0 ||
        (groups * out > 0 && (zeros == NULL || qzeros == NULL)))
        return ASTRO_STATUS_INVALID_ARGUMENT;
    const int64_t words = words_for(out, bits);
    const uint32_t mask = (1u << bits) - 1u;
    const uint32_t *src = (const uint32_t *)qzeros;

    for (int64_t g = 0; g < groups; g++)
        for (int64_t r = 0; r < out; r++) {
            const uint32_t value = stream_get(src + g * words, 1, r, bits);
            zeros[g * out + r] = (float)((value + (uint32_t)offset) & mask);
        }
    return ASTRO_STATUS_OK;
}

astro_status astro_dequantize(const uint8_t *codes, const float *scales,
                              const float *zeros, const int32_t *g_idx,
                              int64_t out, int64_t in, int64_t groups,
                              float *w)
{
    if (out < 0 || in < 0 || groups < 1 || codes == NULL || scales == NULL ||
        zeros == NULL || g_idx == NULL || w == NULL)
        return ASTRO_STATUS_INVALID_ARGUMENT;
    for (int64_t c = 0; c < in; c++)
        if (g_idx[c] < 0 || g_idx[c] >= groups)
            return ASTRO_STATUS_INVALID_ARGUMENT;

    for (int64_t r = 0; r < out; r++) {
        const float *scale = scales + r * groups;
        const float *zero = zeros + r * groups;
        for (int64_t c = 0; c < in; c++) {
            const int32_t g = g_idx[c];
            w[r * in + c] = scale[g] * ((float)codes[r * in + c] - zero[g]);
        }
    }
    return ASTRO_STATUS_OK;
}
