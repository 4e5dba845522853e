/* The inner loops of the fused bilinear resize (ext/_image.pyx), compiled for several
 * instruction sets and chosen once, when the module loads.
 *
 * On x86-64 with GCC, each kernel is built three times (AVX-512, AVX2, and the
 * baseline SSE2 of every x86-64) with `target_clones`; the dynamic loader runs GCC's
 * resolver, which picks the best variant this CPU supports, when the module is
 * imported (an ifunc). Elsewhere (arm64, where NEON is the baseline the compiler
 * vectorizes for; other compilers) there is one variant. `es_simd_variant()` names the
 * one in use, with the same rule the resolver applies.
 *
 * Integer arithmetic only: every variant gives exactly the result of the NumPy
 * reference (ext/_reference.py, resize_bilinear), whatever the vector width. (A
 * horizontal pass written as one gather per value measured slower with AVX2 and
 * AVX-512 on an AMD EPYC than scalar code; the 3-channel one below needs none.)
 */
#ifndef EDGESHARD_RESIZE_KERNELS_H
#define EDGESHARD_RESIZE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define ES_WEIGHT_BITS 11

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define ES_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define ES_HAVE_CLONES 1
#else
#define ES_CLONES
#define ES_HAVE_CLONES 0
#endif

/* The variant the kernels run: "avx512", "avx2" or "sse2" on x86-64 (as the resolver
 * chooses), "neon" on arm64, "generic" elsewhere. */
static const char* es_simd_variant(void) {
#if ES_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
    if (__builtin_cpu_supports("avx2")) return "avx2";
    return "sse2";
#elif defined(__aarch64__)
    return "neon";
#else
    return "generic";
#endif
}

/* Vertical pass over a whole input row: col[i] = r0[i] * 2048 + (r1[i] - r0[i]) * w. */
ES_CLONES
static void es_vertical(const uint8_t* r0, const uint8_t* r1, int32_t w, int32_t* col,
                        ptrdiff_t n) {
    const int16_t w16 = (int16_t)w;
    for (ptrdiff_t i = 0; i < n; i++) {
        col[i] = ((int32_t)r0[i] << ES_WEIGHT_BITS)
                 + (int32_t)((int16_t)r1[i] - (int16_t)r0[i]) * w16;
    }
}

/* Horizontal pass of a 3-channel row for the output pixels whose right neighbour is the
 * next input pixel (x1 == x0 + 3, all but the last one or two), then the lookup table:
 * the six values an output pixel needs are two overlapping 4-lane loads from col, so
 * the arithmetic runs 4 lanes wide without gathers (lane 3 is unused). col must be
 * readable one value past the row. */
typedef int32_t es_v4si __attribute__((vector_size(16)));

static inline es_v4si es_load4(const int32_t* p) {
    es_v4si v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

#define ES_HORIZONTAL3(NAME, OUT_T)                                                      \
    ES_CLONES                                                                            \
    static void NAME(const int32_t* col, const ptrdiff_t* x0, const int32_t* wx,         \
                     ptrdiff_t pixels, const OUT_T* lut, OUT_T* dst) {                   \
        for (ptrdiff_t ox = 0; ox < pixels; ox++) {                                      \
            es_v4si a = es_load4(col + x0[ox]);                                          \
            es_v4si b = es_load4(col + x0[ox] + 3);                                      \
            es_v4si v = ((a << ES_WEIGHT_BITS) + (b - a) * wx[ox] + (1 << 21)) >> 22;    \
            dst[0] = lut[v[0]];                                                          \
            dst[1] = lut[256 + v[1]];                                                    \
            dst[2] = lut[512 + v[2]];                                                    \
            dst += 3;                                                                    \
        }                                                                                \
    }

ES_HORIZONTAL3(es_horizontal3_i8, int8_t)
ES_HORIZONTAL3(es_horizontal3_u8, uint8_t)
ES_HORIZONTAL3(es_horizontal3_f32, float)

#endif
