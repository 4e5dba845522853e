/* The inner loops of the fused bilinear resize (ext/_image.pyx), compiled for several
 * instruction sets; one set is chosen when the module loads.
 *
 * On x86-64 with GCC or Clang every kernel is compiled three times, for AVX-512
 * (x86-64-v4), AVX2 (x86-64-v3) and the SSE2 every x86-64 has, and `es_select(NULL)`
 * points the dispatch table at the best one this CPU supports; `es_select("sse2")`
 * (or "avx2") picks a lower one, for benchmarks and tests. Elsewhere (arm64, where
 * NEON is the baseline the compiler vectorizes for) there is one variant.
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
#include <string.h>

#define ES_WEIGHT_BITS 11

typedef int32_t es_v4si __attribute__((vector_size(16)));

/* Vertical pass over a whole input row: col[i] = r0[i] * 2048 + (r1[i] - r0[i]) * w. */
#define ES_VERTICAL(NAME, TARGET)                                                        \
    TARGET static void NAME(const uint8_t* r0, const uint8_t* r1, int32_t w,             \
                            int32_t* col, ptrdiff_t n) {                                 \
        const int16_t w16 = (int16_t)w;                                                  \
        for (ptrdiff_t i = 0; i < n; i++) {                                              \
            col[i] = ((int32_t)r0[i] << ES_WEIGHT_BITS)                                  \
                     + (int32_t)((int16_t)r1[i] - (int16_t)r0[i]) * w16;                 \
        }                                                                                \
    }

/* Horizontal pass of a 3-channel row for the output pixels whose right neighbour is the
 * next input pixel (x1 == x0 + 3, all but the last one or two), then the lookup table:
 * the six values an output pixel needs are two overlapping 4-lane loads from col, so
 * the arithmetic runs 4 lanes wide without gathers (lane 3 is unused). col must be
 * readable one value past the row. */
#define ES_HORIZONTAL3(NAME, TARGET, OUT_T)                                              \
    TARGET static void NAME(const int32_t* col, const ptrdiff_t* x0, const int32_t* wx, \
                            ptrdiff_t pixels, const OUT_T* lut, OUT_T* dst) {           \
        for (ptrdiff_t ox = 0; ox < pixels; ox++) {                                      \
            es_v4si a, b;                                                                \
            memcpy(&a, col + x0[ox], sizeof a);                                          \
            memcpy(&b, col + x0[ox] + 3, sizeof b);                                      \
            es_v4si v = ((a << ES_WEIGHT_BITS) + (b - a) * wx[ox] + (1 << 21)) >> 22;    \
            dst[0] = lut[v[0]];                                                          \
            dst[1] = lut[256 + v[1]];                                                    \
            dst[2] = lut[512 + v[2]];                                                    \
            dst += 3;                                                                    \
        }                                                                                \
    }

#define ES_VARIANT(SUFFIX, TARGET)                                                       \
    ES_VERTICAL(es_vertical_##SUFFIX, TARGET)                                            \
    ES_HORIZONTAL3(es_horizontal3_i8_##SUFFIX, TARGET, int8_t)                          \
    ES_HORIZONTAL3(es_horizontal3_u8_##SUFFIX, TARGET, uint8_t)                         \
    ES_HORIZONTAL3(es_horizontal3_f32_##SUFFIX, TARGET, float)

typedef void (*es_vertical_fn)(const uint8_t*, const uint8_t*, int32_t, int32_t*, ptrdiff_t);
typedef void (*es_h3_i8_fn)(const int32_t*, const ptrdiff_t*, const int32_t*, ptrdiff_t,
                            const int8_t*, int8_t*);
typedef void (*es_h3_u8_fn)(const int32_t*, const ptrdiff_t*, const int32_t*, ptrdiff_t,
                            const uint8_t*, uint8_t*);
typedef void (*es_h3_f32_fn)(const int32_t*, const ptrdiff_t*, const int32_t*, ptrdiff_t,
                             const float*, float*);

typedef struct {
    const char* name;
    int (*supported)(void);
    es_vertical_fn vertical;
    es_h3_i8_fn horizontal3_i8;
    es_h3_u8_fn horizontal3_u8;
    es_h3_f32_fn horizontal3_f32;
} es_variant;

#define ES_ENTRY(NAME, SUPPORTED, SUFFIX)                                                \
    {NAME, SUPPORTED, es_vertical_##SUFFIX, es_horizontal3_i8_##SUFFIX,                 \
     es_horizontal3_u8_##SUFFIX, es_horizontal3_f32_##SUFFIX}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
ES_VARIANT(v4, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2"))))
ES_VARIANT(v3, __attribute__((target("avx2,fma,bmi2"))))
ES_VARIANT(v1, )

static int es_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
static int es_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static int es_always(void) { return 1; }

/* best first */
static const es_variant es_variants[] = {
    ES_ENTRY("avx512", es_has_avx512, v4),
    ES_ENTRY("avx2", es_has_avx2, v3),
    ES_ENTRY("sse2", es_always, v1),
};
#else
ES_VARIANT(base, )
static int es_always(void) { return 1; }
static const es_variant es_variants[] = {
#if defined(__aarch64__)
    ES_ENTRY("neon", es_always, base),
#else
    ES_ENTRY("generic", es_always, base),
#endif
};
#endif

#define ES_VARIANT_COUNT ((int)(sizeof es_variants / sizeof es_variants[0]))

static const es_variant* es_active = NULL;

/* Use the variant called `name` (NULL: the best this CPU supports). Returns its name, or
 * NULL (the active one unchanged) when there is no such variant or the CPU lacks it. */
static const char* es_select(const char* name) {
    for (int i = 0; i < ES_VARIANT_COUNT; i++) {
        const es_variant* v = &es_variants[i];
        if ((name == NULL || strcmp(name, v->name) == 0) && v->supported()) {
            es_active = v;
            return v->name;
        }
    }
    return NULL;
}

/* The names of the variants this CPU can run, best first, in `out` (at most `size`). */
static int es_supported(const char** out, int size) {
    int count = 0;
    for (int i = 0; i < ES_VARIANT_COUNT && count < size; i++) {
        if (es_variants[i].supported()) out[count++] = es_variants[i].name;
    }
    return count;
}

static void es_vertical(const uint8_t* r0, const uint8_t* r1, int32_t w, int32_t* col,
                        ptrdiff_t n) {
    es_active->vertical(r0, r1, w, col, n);
}
static void es_horizontal3_i8(const int32_t* col, const ptrdiff_t* x0, const int32_t* wx,
                              ptrdiff_t pixels, const int8_t* lut, int8_t* dst) {
    es_active->horizontal3_i8(col, x0, wx, pixels, lut, dst);
}
static void es_horizontal3_u8(const int32_t* col, const ptrdiff_t* x0, const int32_t* wx,
                              ptrdiff_t pixels, const uint8_t* lut, uint8_t* dst) {
    es_active->horizontal3_u8(col, x0, wx, pixels, lut, dst);
}
static void es_horizontal3_f32(const int32_t* col, const ptrdiff_t* x0, const int32_t* wx,
                               ptrdiff_t pixels, const float* lut, float* dst) {
    es_active->horizontal3_f32(col, x0, wx, pixels, lut, dst);
}

#endif
