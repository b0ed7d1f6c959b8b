/* C kernels of the DCLS kernel construction: 1-D/2-D Gaussian spans, float32 (private; see _construct_c.py).

   Compiled twice, by _construct_avx512.c (W = 16 lanes, one zmm register per vector) and _construct_avx2.c
   (W = 8, one ymm register), each an optional extension module of the package. The work unit is a block of W
   consecutive (out, in) rows held lane-major in per-call scratch (A[k][x][lane]), as in the numba kernels:

   forward   params -> (clamp, |sigma| floor) -> per-axis profiles and sums -> tap scales w / (Z0 Z1 + 1e-7)
             -> sum over taps of outer products (register-tiled) -> transposed into the block's output rows;
   backward  the same profiles, the upstream gradient rows transposed in, E0 = A1 G^T and E1 = A0 G
             (register-tiled), then per tap the weight, position (straight through the clamp) and sigma
             (through max(|s|, floor)) gradients, transposed out.

   A block's outputs are contiguous (W rows of C floats = C whole vectors): they are assembled in an L1 staging
   buffer and written with non-temporal stores where aligned, which spares the read-for-ownership of lines the
   kernel overwrites entirely. Profile values below exp(-tail) of the peak are zero where a profile is computed
   point by point, as in the other backends; the recurrence (taken where every value is above 2^-120) keeps them,
   which changes values by less than 4e-18 of the peak (tail = 40) and saves a compare and a blend per point
   (row 4 of the benchmark, one thread: forward -7%, backward -5%).

   Entry points take flat float32 arrays (positions and sigma [D, R, K], weight [R, K], kernel [R, S0 * S1]) and
   a block range [b0, b1), so that callers can split the rows over threads. No Python API is used; the module
   init function only makes the shared object importable. */

#include <Python.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ vectors */
#if defined(DCLSZOO_AVX512)
#define W 16
#define TM 4 /* register tile of the small matrix products: TM x TN sums */
#define TN 7
typedef __m512 V;
typedef __mmask16 VM;
#define vload(p) _mm512_loadu_ps(p)
#define vstore(p, v) _mm512_storeu_ps((p), (v))
#define vstream(p, v) _mm512_stream_ps((p), (v))
#define vset1(x) _mm512_set1_ps(x)
#define vzero() _mm512_setzero_ps()
#define vadd(a, b) _mm512_add_ps((a), (b))
#define vsub(a, b) _mm512_sub_ps((a), (b))
#define vmul(a, b) _mm512_mul_ps((a), (b))
#define vdiv(a, b) _mm512_div_ps((a), (b))
#define vfma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define vmin(a, b) _mm512_min_ps((a), (b))
#define vmax(a, b) _mm512_max_ps((a), (b))
#define vabs(a) _mm512_abs_ps(a)
#define vgt(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#define vge(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GE_OQ)
#define vlt(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define vsel(m, a, b) _mm512_mask_blend_ps((m), (b), (a)) /* m ? a : b */
#define vall(m) ((m) == (VM)0xFFFF)
#define vround(t) _mm512_roundscale_ps((t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vscale2(p, n) _mm512_scalef_ps((p), (n)) /* p * 2**n, n integral */

#elif defined(DCLSZOO_AVX2)
#define W 8
#define TM 2
#define TN 4
typedef __m256 V;
typedef __m256 VM;
#define vload(p) _mm256_loadu_ps(p)
#define vstore(p, v) _mm256_storeu_ps((p), (v))
#define vstream(p, v) _mm256_stream_ps((p), (v))
#define vset1(x) _mm256_set1_ps(x)
#define vzero() _mm256_setzero_ps()
#define vadd(a, b) _mm256_add_ps((a), (b))
#define vsub(a, b) _mm256_sub_ps((a), (b))
#define vmul(a, b) _mm256_mul_ps((a), (b))
#define vdiv(a, b) _mm256_div_ps((a), (b))
#define vfma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define vmin(a, b) _mm256_min_ps((a), (b))
#define vmax(a, b) _mm256_max_ps((a), (b))
#define vabs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define vgt(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#define vge(a, b) _mm256_cmp_ps((a), (b), _CMP_GE_OQ)
#define vlt(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define vsel(m, a, b) _mm256_blendv_ps((b), (a), (m))
#define vall(m) (_mm256_movemask_ps(m) == 0xFF)
#define vround(t) _mm256_round_ps((t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
static inline V vscale2(V p, V n) {
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

#else
#error "define DCLSZOO_AVX512 or DCLSZOO_AVX2"
#endif

#define LOG2E 1.4426950408889634f
#define SAFE (-120.0f) /* the walk runs where every value and ratio is above 2**SAFE (float32 normals: 2**-126) */
#define EPS 1e-7f      /* dclszoo.reference.GAUSS_EPS */

/* 2**t for t >= -126: t = n + f with n the nearest integer and, for 2**f with |f| <= 1/2, a degree-5 polynomial
   fitted for relative error (7.5e-8 in exact arithmetic, 2.4e-7 evaluated in float32) */
static inline V vexp2(V t) {
    V n = vround(t);
    V f = vsub(t, n);
    V p = vset1(0.0013276446271877624f);
    p = vfma(p, f, vset1(0.009675533207438598f));
    p = vfma(p, f, vset1(0.05550713274375442f));
    p = vfma(p, f, vset1(0.24022119876006953f));
    p = vfma(p, f, vset1(0.6931469671149861f));
    p = vfma(p, f, vset1(1.0000000716233923f));
    return vscale2(p, n);
}

/* --------------------------------------------------------------------------------- rows <-> lane-major */
static inline void tr8(__m256 r[8]) {
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
        t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
    }
    for (int i = 0; i < 8; i++) r[i] = t[i];
}

/* dst[i*ds + l] = src[l*ss + i] for l < W and i < n_out: a W x W block through 8 x 8 blocks of 8-wide vectors (a
   16 x 16 block through 512-bit shuffles is 1.5x slower on Zen 4). Output rows are written in ascending order,
   each whole (W floats) before the next, so that with ds < W every row overwrites the previous row's excess. */
static inline void tr_mem(const float *src, long ss, float *dst, long ds, int n_out) {
    for (int g = 0; g < n_out; g += 8) { /* output rows g..g+7: input columns g..g+7 */
        __m256 blk[W / 8][8];
        for (int h = 0; h < W / 8; h++) { /* input rows 8h..8h+7: output columns 8h..8h+7 */
            for (int i = 0; i < 8; i++) blk[h][i] = _mm256_loadu_ps(src + (size_t)(8 * h + i) * ss + g);
            tr8(blk[h]);
        }
        int m = n_out - g < 8 ? n_out - g : 8;
        for (int i = 0; i < m; i++)
            for (int h = 0; h < W / 8; h++) _mm256_storeu_ps(dst + (size_t)(g + i) * ds + 8 * h, blk[h][i]);
    }
}
/* Software prefetch of n floats from p into L2 (a hint: the hardware prefetchers alone left the backward waiting
   on the upstream gradient, 3.7 instead of 4.5 ms for row 4 of the benchmark; into L1 it gained nothing). */
static inline void prefetch_l2(const float *p, long n) {
    for (long l = 0; l < n; l += 64 / sizeof(float)) _mm_prefetch((const char *)(p + l), _MM_HINT_T1);
}
#define PREFETCH_BLOCKS 2 /* how many blocks ahead */

#if W == 16
/* Column counts that are not a multiple of 8 leave c % 8 columns: up to LEFT of them go one by one through a
   gather (rows -> lane-major) or a scatter (back), more through one more 8 x 8 group overlapping the previous one.
   (Row 4 of the benchmark: 49 = 6 x 8 + 1 kernel columns, 9 = 8 + 1 taps; one thread, forward -3%, backward -4%
   against 16 x 16 groups, the last one overlapping.) */
#define LEFT 2
static inline __m512i lane_offsets(int c) { /* lane * c */
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(c));
}
#endif

/* src holds `valid` rows of c floats (row-major, contiguous); dst[j*W + lane] = src[lane*c + j] for j < c (rows
   past `valid` are zero). `avail` floats are readable from src; `pad` is scratch of W*c + W floats. */
static void rows_in(const float *src, int valid, int c, long avail, float *dst, float *pad) {
    const float *rows = src;
#if W == 16
    if (c >= 8) { /* whole 8 x 8 groups read inside the rows: only a partial block needs the padded copy */
        if (valid < W) {
            memcpy(pad, src, sizeof(float) * (size_t)valid * c);
            memset(pad + (size_t)valid * c, 0, sizeof(float) * (size_t)(W - valid) * c);
            rows = pad;
        }
        int j = 0;
        for (; j + 8 <= c; j += 8) tr_mem(rows + j, c, dst + (size_t)j * W, W, 8);
        if (j < c && c - j <= LEFT) {
            __m512i idx = lane_offsets(c);
            for (; j < c; j++) vstore(dst + (size_t)j * W, _mm512_i32gather_ps(idx, rows + j, 4));
        } else if (j < c) {
            tr_mem(rows + c - 8, c, dst + (size_t)(c - 8) * W, W, 8);
        }
        return;
    }
#endif
    /* rows shorter than a vector are read W floats at a time (into the next rows): fine inside the array */
    if (valid < W || (c < W && (long)(W - 1) * c + W > avail)) { /* else through zero-padded scratch */
        memcpy(pad, src, sizeof(float) * (size_t)valid * c);
        memset(pad + (size_t)valid * c, 0, sizeof(float) * ((size_t)(W - valid) * c + W));
        rows = pad;
    }
    for (int j0 = 0; j0 < c; j0 += W) {
        int j = (c >= W && j0 + W > c) ? c - W : j0; /* the last columns: an overlapping group (same values) */
        tr_mem(rows + j, c, dst + (size_t)j * W, W, c - j < W ? c - j : W);
    }
}

#if W == 16
/* Columns j..j+7 of lane-major src into the W rows of c floats at stage (exactly 8 floats per row). */
static inline void tr_out8(const float *src, int j, float *stage, int c) {
    for (int g = 0; g < W; g += 8) {
        __m256 blk[8];
        for (int i = 0; i < 8; i++) blk[i] = _mm256_loadu_ps(src + (size_t)(j + i) * W + g);
        tr8(blk);
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(stage + (size_t)(g + i) * c + j, blk[i]);
    }
}
#endif

/* Inverse of rows_in: lane-major src[j*W + lane] (j < c) into `valid` contiguous rows of c floats at dst, through
   the staging buffer `stage` (W*c + W floats, 64-byte aligned); whole blocks with non-temporal stores when dst is
   aligned to a vector. */
static void rows_out(const float *src, int c, float *dst, int valid, float *stage) {
#if W == 16
    if (c >= 8) {
        int j = 0;
        for (; j + 8 <= c; j += 8) tr_out8(src, j, stage, c);
        if (j < c && c - j <= LEFT) {
            __m512i idx = lane_offsets(c);
            for (; j < c; j++) _mm512_i32scatter_ps(stage + j, idx, vload(src + (size_t)j * W), 4);
        } else if (j < c) {
            tr_out8(src, c - 8, stage, c);
        }
    } else
#endif
    for (int j0 = 0; j0 < c; j0 += W) {
        int j = (c >= W && j0 + W > c) ? c - W : j0;
        tr_mem(src + (size_t)j * W, W, stage + j, c, W); /* ascending rows: each overwrites the last one's excess */
    }
    if (valid == W) {
        if (((uintptr_t)dst % (W * sizeof(float))) == 0) {
            for (int j = 0; j < c; j++) vstream(dst + (size_t)j * W, vload(stage + (size_t)j * W));
        } else {
            for (int j = 0; j < c; j++) vstore(dst + (size_t)j * W, vload(stage + (size_t)j * W));
        }
    } else {
        memcpy(dst, stage, sizeof(float) * (size_t)valid * c);
    }
}

/* -------------------------------------------------------------------------------- small matrix products */
/* C[i*ci + j*cj] = sum_l f[l] A[i*ai + l*al] * B[l*bl + j*bj] (indices in vectors; f = 1 when `scale` is NULL,
   else the vector scale[l*W]), one register tile of tm x tn */
#define DEF_TILE(M_, N_)                                                                                         \
    static void tile_##M_##_##N_(float *C, long ci, long cj, const float *A, long ai, long al, const float *B,   \
                                 long bl, long bj, int kk, const float *scale) {                                 \
        V acc[M_][N_];                                                                                           \
        for (int i = 0; i < M_; i++)                                                                             \
            for (int j = 0; j < N_; j++) acc[i][j] = vzero();                                                    \
        for (int l = 0; l < kk; l++) {                                                                           \
            V a[M_];                                                                                             \
            for (int i = 0; i < M_; i++) a[i] = vload(A + (i * ai + l * al) * W);                                \
            if (scale) {                                                                                         \
                V f = vload(scale + (size_t)l * W);                                                              \
                for (int i = 0; i < M_; i++) a[i] = vmul(a[i], f);                                               \
            }                                                                                                    \
            for (int j = 0; j < N_; j++) {                                                                       \
                V b = vload(B + (l * bl + j * bj) * W);                                                          \
                for (int i = 0; i < M_; i++) acc[i][j] = vfma(a[i], b, acc[i][j]);                               \
            }                                                                                                    \
        }                                                                                                        \
        for (int i = 0; i < M_; i++)                                                                             \
            for (int j = 0; j < N_; j++) vstore(C + (i * ci + j * cj) * W, acc[i][j]);                           \
    }

typedef void (*tile_fn)(float *, long, long, const float *, long, long, const float *, long, long, int,
                        const float *);

#define DEF_ROW(M_) DEF_TILE(M_, 1) DEF_TILE(M_, 2) DEF_TILE(M_, 3) DEF_TILE(M_, 4)
DEF_ROW(1) DEF_ROW(2)
#if TM >= 4
DEF_ROW(3) DEF_ROW(4)
DEF_TILE(1, 5) DEF_TILE(1, 6) DEF_TILE(1, 7) DEF_TILE(2, 5) DEF_TILE(2, 6) DEF_TILE(2, 7)
DEF_TILE(3, 5) DEF_TILE(3, 6) DEF_TILE(3, 7) DEF_TILE(4, 5) DEF_TILE(4, 6) DEF_TILE(4, 7)
static const tile_fn TILES[TM][TN] = {
    {tile_1_1, tile_1_2, tile_1_3, tile_1_4, tile_1_5, tile_1_6, tile_1_7},
    {tile_2_1, tile_2_2, tile_2_3, tile_2_4, tile_2_5, tile_2_6, tile_2_7},
    {tile_3_1, tile_3_2, tile_3_3, tile_3_4, tile_3_5, tile_3_6, tile_3_7},
    {tile_4_1, tile_4_2, tile_4_3, tile_4_4, tile_4_5, tile_4_6, tile_4_7},
};
#else
static const tile_fn TILES[TM][TN] = {
    {tile_1_1, tile_1_2, tile_1_3, tile_1_4},
    {tile_2_1, tile_2_2, tile_2_3, tile_2_4},
};
#endif

static void gemm(float *C, long ci, long cj, const float *A, long ai, long al, const float *B, long bl, long bj, int m,
                 int n, int kk, const float *scale) {
    for (int i0 = 0; i0 < m; i0 += TM) {
        int tm = m - i0 < TM ? m - i0 : TM;
        for (int j0 = 0; j0 < n; j0 += TN) {
            int tn = n - j0 < TN ? n - j0 : TN;
            TILES[tm - 1][tn - 1](C + (i0 * ci + j0 * cj) * W, ci, cj, A + i0 * ai * W, ai, al, B + j0 * bj * W, bl,
                                  bj, kk, scale);
        }
    }
}

/* -------------------------------------------------------------------------------------------- profiles */
/* Gaussian profile of one tap on W rows: a[j*W] = exp(-u_j^2 / (2 s^2)) with u_j = c0 + j - pos, j < n (0 below
   exp(-tail) on the point-by-point path); returns the sum. From the middle point outwards by the recurrence
   phi(u +- 1) = phi(u) r, r *= q (three exp2 and products) where every value and ratio stays in range in all lanes,
   else one exp2 per point. `coef` = -log2(e) / (2 s^2). Always inlined, so that a constant n unrolls the walk
   (see profile_n). `odd` (a constant: n odd and >= 3, AVX-512) saves 6 of ~43 multiply-class operations, the FMA
   pipes being what bounds this code: the farthest point from |pos| (the grid is symmetric), and q = ru rd, exact
   since ru = 2^(coef (2 um + 1)) and rd = 2^(coef (1 - 2 um)). Then t_far <= t_up, t_dn (as (|um| + mid)^2 >=
   2 |um| + 1), so the range check keeps both ratios normal and scalef needs no clamp. */
static inline __attribute__((always_inline)) V profile(V pos, V coef, int n, float c0, int odd, V limit, float *a) {
    int mid = n / 2, up = n - 1 - mid;
    V u0 = vsub(vset1(c0), pos);
    V um = vadd(u0, vset1((float)mid));
    V t_mid = vmul(vmul(um, um), coef);
    V t_q = vadd(coef, coef);
    V t_up = vmul(coef, vadd(vadd(um, um), vset1(1.0f)));
    V t_dn = vmul(coef, vsub(vset1(1.0f), vadd(um, um)));
    V t_far;
    if (odd) { /* |u0| = |mid + pos|, |u_(n-1)| = |mid - pos| */
        V h = vadd(vset1((float)mid), vabs(pos));
        t_far = vmul(coef, vmul(h, h));
    } else {
        V uh = vadd(u0, vset1((float)(n - 1)));
        t_far = vmul(coef, vmax(vmul(u0, u0), vmul(uh, uh)));
    }
    V low = vmin(vmin(t_mid, t_q), vmin(vsub(vzero(), vmax(t_up, t_dn)), t_far));
    V z;
    if (vall(vge(low, vset1(SAFE)))) {
        V v = vexp2(t_mid), q, ru, rd;
        if (odd) {
            ru = vexp2(t_up);
            rd = vexp2(t_dn);
            q = vmul(ru, rd);
        } else {
            q = vexp2(t_q);
            ru = vexp2(vmax(t_up, vset1(-100.0f)));
            rd = vexp2(vmax(t_dn, vset1(-100.0f)));
        }
        vstore(a + mid * W, v);
        z = v;
        V vu = v, vd = v;
        for (int j = 1; j <= mid; j++) {
            vd = vmul(vd, rd);
            rd = vmul(rd, q);
            vstore(a + (mid - j) * W, vd);
            z = vadd(z, vd);
            if (j <= up) {
                vu = vmul(vu, ru);
                ru = vmul(ru, q);
                vstore(a + (mid + j) * W, vu);
                z = vadd(z, vu);
            }
        }
    } else {
        z = vzero();
        V u = u0;
        for (int j = 0; j < n; j++) {
            V t = vmul(vmul(u, u), coef);
            VM keep = vgt(t, limit);
            V v = vsel(keep, vexp2(vmax(t, vset1(-126.0f))), vzero());
            vstore(a + j * W, v);
            z = vadd(z, v);
            u = vadd(u, vset1(1.0f));
        }
    }
    return z;
}

/* profile() for a span of n points, with the walk unrolled for the usual small odd spans (row 4 of the benchmark,
   one thread: backward -2%, forward unchanged). */
static V profile_n(V pos, V coef, int n, V limit, float *a) {
    const int odd = W == 16; /* AVX2's vscale2 builds the exponent in integers: it needs the clamps */
    switch (n) {
    case 3: return profile(pos, coef, 3, -1.0f, odd, limit, a);
    case 5: return profile(pos, coef, 5, -2.0f, odd, limit, a);
    case 7: return profile(pos, coef, 7, -3.0f, odd, limit, a);
    default: return profile(pos, coef, n, (float)(-(n / 2)), 0, limit, a);
    }
}

/* --------------------------------------------------------------------------------------------- scratch */
typedef struct {
    /* lane-major per tap: weights, clamped positions, 1 / std, d std / d sigma, profiles, sums, w / den, 1 / den */
    float *wl, *pl, *inv, *chain, *a0, *a1, *z0, *z1, *sc, *iden, *acc, *e0, *e1, *gsc, *res, *stage, *pad;
    void *mem;
} Scratch;

static int scratch_init(Scratch *s, int D, int K, int S0, int S1) {
    size_t n = (size_t)K * W, m = (size_t)S0 * S1;
    size_t big = (m > (size_t)K ? m : (size_t)K) * W + W; /* staging / padding of one block's rows */
    size_t sizes[17] = {n, D * n, D * n, D * n, n * S0, n * S1, n, n, n, n, m * W, n * S0, n * S1, n,
                        4 * n, big, big};
    size_t total = 0;
    for (int i = 0; i < 17; i++) total += (sizes[i] + 15) & ~(size_t)15; /* keep every array 64-byte aligned */
    float *mem = (float *)aligned_alloc(64, total * sizeof(float));
    if (!mem) return 0;
    float **slots[17] = {&s->wl, &s->pl, &s->inv, &s->chain, &s->a0, &s->a1, &s->z0, &s->z1, &s->sc,
                         &s->iden, &s->acc, &s->e0, &s->e1, &s->gsc, &s->res, &s->stage, &s->pad};
    float *p = mem;
    for (int i = 0; i < 17; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    s->mem = mem;
    return 1;
}

/* Parameters of block r0 (valid rows) lane-major, the clamp and the sigma floor applied; the profiles, their sums,
   the tap scales sc = w / den and iden = 1 / den, den = Z0 Z1 + 1e-7 (three divisions per tap in all). */
static void block_params(const float *w, const float *p, const float *sg, long R, int D, int K, int S0, int S1,
                         const float *lo, const float *hi, int bounded, float fl, float tail, long r0, int valid,
                         Scratch *s) {
    size_t n = (size_t)K * W;
    long left = (R - r0) * K; /* readable floats from the block's first row to the end of its array */
    long ahead = r0 + PREFETCH_BLOCKS * W;
    if (ahead + W <= R) {
        prefetch_l2(w + ahead * K, W * K);
        for (int d = 0; d < D; d++) {
            prefetch_l2(p + d * R * K + ahead * K, W * K);
            prefetch_l2(sg + d * R * K + ahead * K, W * K);
        }
    }
    rows_in(w + r0 * K, valid, K, left, s->wl, s->pad);
    for (int d = 0; d < D; d++) {
        rows_in(p + d * R * K + r0 * K, valid, K, left, s->pl + d * n, s->pad);
        rows_in(sg + d * R * K + r0 * K, valid, K, left, s->inv + d * n, s->pad); /* raw sigma, for now */
    }
    V limit = vset1(-tail * LOG2E), vfl = vset1(fl);
    for (int d = 0; d < D; d++) {
        V vlo = vset1(bounded ? lo[d] : 0.0f), vhi = vset1(bounded ? hi[d] : 0.0f);
        int size = d == 0 ? S0 : S1;
        float *a = d == 0 ? s->a0 : s->a1, *z = d == 0 ? s->z0 : s->z1;
        for (int k = 0; k < K; k++) {
            size_t q = d * n + (size_t)k * W;
            V pos = vload(s->pl + q), raw = vload(s->inv + q);
            if (bounded) pos = vmin(vmax(pos, vlo), vhi);
            V sd = raw, ch = vset1(1.0f);
            if (fl > 0.0f) { /* std = max(|s|, floor); d std / d s = sign(s) * (|s| >= floor) */
                V ab = vabs(raw);
                V sign = vsel(vlt(raw, vzero()), vset1(-1.0f), vset1(1.0f));
                ch = vsel(vge(ab, vfl), sign, vzero());
                sd = vmax(ab, vfl);
            }
            V inv = vdiv(vset1(1.0f), sd);
            V coef = vmul(vset1(-0.5f * LOG2E), vmul(inv, inv));
            vstore(s->pl + q, pos);
            vstore(s->inv + q, inv);
            vstore(s->chain + q, ch);
            vstore(z + k * W, profile_n(pos, coef, size, limit, a + (size_t)k * size * W));
        }
    }
    for (int k = 0; k < K; k++) {
        V z1 = D == 2 ? vload(s->z1 + k * W) : vset1(1.0f);
        V iden = vdiv(vset1(1.0f), vfma(vload(s->z0 + k * W), z1, vset1(EPS)));
        vstore(s->iden + k * W, iden);
        vstore(s->sc + k * W, vmul(vload(s->wl + k * W), iden));
        if (D == 1) vstore(s->z1 + k * W, vset1(1.0f));
    }
    if (D == 1)
        for (int k = 0; k < K; k++) vstore(s->a1 + k * W, vset1(1.0f));
}

/* ----------------------------------------------------------------------------------------- entry points */
/* Dense kernel rows out[R, S0*S1] for blocks [b0, b1); D = 1 (S1 = 1) or 2. Returns 0 if scratch could not be
   allocated. */
int dclszoo_construct_forward(const float *w, const float *p, const float *sg, long R, int D, int K, int S0, int S1,
                              const float *lo, const float *hi, int bounded, float fl, float tail, float *out, long b0,
                              long b1) {
    Scratch s;
    if (!scratch_init(&s, D, K, S0, S1)) return 0;
    int m = S0 * S1;
    for (long b = b0; b < b1; b++) {
        long r0 = b * W;
        int valid = R - r0 < W ? (int)(R - r0) : W;
        block_params(w, p, sg, R, D, K, S0, S1, lo, hi, bounded, fl, tail, r0, valid, &s);
        if (D == 1) { /* acc[y] = sum_k sc[k] a0[k][y] */
            for (int y = 0; y < S0; y++) {
                V v = vzero();
                for (int k = 0; k < K; k++) v = vfma(vload(s.sc + k * W), vload(s.a0 + ((size_t)k * S0 + y) * W), v);
                vstore(s.acc + (size_t)y * W, v);
            }
        } else { /* acc[y][x] = sum_k sc[k] a0[k][y] a1[k][x] */
            gemm(s.acc, S1, 1, s.a0, 1, S0, s.a1, S1, 1, S0, S1, K, s.sc);
        }
        rows_out(s.acc, m, out + r0 * m, valid, s.stage);
    }
    _mm_sfence();
    free(s.mem);
    return 1;
}

/* Position and sigma gradients of one axis of one tap from its profile a and contraction e (arrays of S vectors:
   in registers in the fused backward, in scratch in tap_grads) and the coordinates u_j = c0 + j - pos, into out_p
   and out_s. */
#define AXIS_GRADS(S_, a, e, pos, inv, ch, sc, shift, out_p, out_s)                                              \
    do {                                                                                                         \
        V m1 = vzero(), m2 = vzero(), u = vsub(vset1((float)(-((S_) / 2))), (pos));                              \
        for (int j = 0; j < (S_); j++) {                                                                         \
            V t = vmul(vmul(vfma((sc), (e)[j], (shift)), (a)[j]), u);                                            \
            m1 = vadd(m1, t);                                                                                    \
            m2 = vfma(t, u, m2);                                                                                 \
            u = vadd(u, vset1(1.0f));                                                                            \
        }                                                                                                        \
        V inv2 = vmul((inv), (inv));                                                                             \
        vstore((out_p), vmul(m1, inv2));                                                                         \
        vstore((out_s), vmul(vmul(vmul(m2, inv2), (ch)), (inv)));                                               \
    } while (0)

/* Position and sigma gradients of axis d for all taps, into res[0 | 2][d][k] (positions | sigma); e[k*e_tap + j] is
   the upstream gradient contracted with the other axis' profile (in 1-D the gradient itself: e_tap = 0). */
static void tap_grads(int d, int K, int S0, int S1, const float *e, size_t e_tap, Scratch *s) {
    size_t n = (size_t)K * W;
    int size = d == 0 ? S0 : S1;
    const float *a = d == 0 ? s->a0 : s->a1;
    const float *zo = d == 0 ? s->z1 : s->z0;
    for (int k = 0; k < K; k++) {
        size_t q = d * n + (size_t)k * W;
        V pos = vload(s->pl + q), inv = vload(s->inv + q), ch = vload(s->chain + q);
        V sc = vload(s->sc + k * W), gsc = vload(s->gsc + k * W), iden = vload(s->iden + k * W);
        V shift = vmul(vmul(vmul(vsub(vzero(), gsc), sc), vload(zo + k * W)), iden); /* the normaliser's share */
        /* scratch vectors are W-float aligned: viewed as arrays of V (may-alias vector types) */
        AXIS_GRADS(size, (const V *)(a + (size_t)k * size * W), (const V *)(e + (size_t)k * e_tap * W), pos, inv, ch,
                   sc, shift, s->res + q, s->res + 2 * n + q);
    }
}

/* The block's weight (wl), position and sigma (res) gradients into their rows. */
static void write_grads(Scratch *s, long R, int D, int K, long r0, int valid, float *gw, float *gp, float *gs) {
    size_t n = (size_t)K * W;
    if (gw) rows_out(s->wl, K, gw + r0 * K, valid, s->stage);
    for (int d = 0; d < D; d++) {
        if (gp) rows_out(s->res + d * n, K, gp + d * R * K + r0 * K, valid, s->stage);
        if (gs) rows_out(s->res + 2 * n + d * n, K, gs + d * R * K + r0 * K, valid, s->stage);
    }
}

/* The whole per-tap backward of a square 2-D span S small enough for a tap's two profiles and contractions to stay
   in registers (4 S vectors; AVX-512): E0[y] = sum_x a1[x] G[y][x] and E1[x] = sum_y a0[y] G[y][x] in one pass over G,
   dL/dsc, the weight gradient (into wl) and both axes' position and sigma gradients (into res). */
#define DEF_TAPS_FUSED(S_)                                                                                       \
    static void taps_fused_##S_(const float *G, int K, Scratch *s) {                                             \
        size_t n = (size_t)K * W;                                                                                \
        for (int k = 0; k < K; k++) {                                                                            \
            V x0[S_], x1[S_], y0[S_], y1[S_];                                                                    \
            for (int j = 0; j < S_; j++) {                                                                       \
                x0[j] = vload(s->a0 + ((size_t)k * S_ + j) * W);                                                 \
                x1[j] = vload(s->a1 + ((size_t)k * S_ + j) * W);                                                 \
                y0[j] = vzero();                                                                                 \
                y1[j] = vzero();                                                                                 \
            }                                                                                                    \
            for (int y = 0; y < S_; y++)                                                                         \
                for (int x = 0; x < S_; x++) {                                                                   \
                    V g = vload(G + ((size_t)y * S_ + x) * W);                                                   \
                    y0[y] = vfma(g, x1[x], y0[y]);                                                               \
                    y1[x] = vfma(g, x0[y], y1[x]);                                                               \
                }                                                                                                \
            V gsc = vzero();                                                                                     \
            for (int y = 0; y < S_; y++) gsc = vfma(x0[y], y0[y], gsc);                                          \
            V sc = vload(s->sc + k * W), iden = vload(s->iden + k * W);                                          \
            vstore(s->wl + k * W, vmul(gsc, iden));                                                              \
            V base = vmul(vmul(vsub(vzero(), gsc), sc), iden); /* the normaliser's share, times Z of the other */ \
            size_t q0 = (size_t)k * W, q1 = n + (size_t)k * W;                                                   \
            AXIS_GRADS(S_, x0, y0, vload(s->pl + q0), vload(s->inv + q0), vload(s->chain + q0), sc,              \
                       vmul(base, vload(s->z1 + k * W)), s->res + q0, s->res + 2 * n + q0);                      \
            AXIS_GRADS(S_, x1, y1, vload(s->pl + q1), vload(s->inv + q1), vload(s->chain + q1), sc,              \
                       vmul(base, vload(s->z0 + k * W)), s->res + q1, s->res + 2 * n + q1);                      \
        }                                                                                                        \
    }
/* The same in two passes over G per tap (E0 with a1, then E1 with a0: 2 S vectors live at a time), for AVX2's 16
   registers. */
#define DEF_TAPS_FUSED2(S_)                                                                                      \
    static void taps_fused_##S_(const float *G, int K, Scratch *s) {                                             \
        size_t n = (size_t)K * W;                                                                                \
        for (int k = 0; k < K; k++) {                                                                            \
            const float *a0 = s->a0 + (size_t)k * S_ * W, *a1 = s->a1 + (size_t)k * S_ * W;                      \
            V x[S_], y[S_], e0[S_];                                                                              \
            for (int j = 0; j < S_; j++) {                                                                       \
                x[j] = vload(a1 + (size_t)j * W);                                                                \
                y[j] = vzero();                                                                                  \
            }                                                                                                    \
            for (int r = 0; r < S_; r++)                                                                         \
                for (int c = 0; c < S_; c++) y[r] = vfma(vload(G + ((size_t)r * S_ + c) * W), x[c], y[r]);     \
            for (int j = 0; j < S_; j++) {                                                                       \
                e0[j] = y[j];                                                                                    \
                x[j] = vload(a0 + (size_t)j * W);                                                                \
                y[j] = vzero();                                                                                  \
            }                                                                                                    \
            for (int r = 0; r < S_; r++)                                                                         \
                for (int c = 0; c < S_; c++) y[c] = vfma(vload(G + ((size_t)r * S_ + c) * W), x[r], y[c]);     \
            V gsc = vzero();                                                                                     \
            for (int j = 0; j < S_; j++) gsc = vfma(x[j], e0[j], gsc);                                           \
            V sc = vload(s->sc + k * W), iden = vload(s->iden + k * W);                                          \
            vstore(s->wl + k * W, vmul(gsc, iden));                                                              \
            V base = vmul(vmul(vsub(vzero(), gsc), sc), iden);                                                   \
            size_t q0 = (size_t)k * W, q1 = n + (size_t)k * W;                                                   \
            AXIS_GRADS(S_, x, e0, vload(s->pl + q0), vload(s->inv + q0), vload(s->chain + q0), sc,               \
                       vmul(base, vload(s->z1 + k * W)), s->res + q0, s->res + 2 * n + q0);                      \
            for (int j = 0; j < S_; j++) x[j] = vload(a1 + (size_t)j * W);                                       \
            AXIS_GRADS(S_, x, y, vload(s->pl + q1), vload(s->inv + q1), vload(s->chain + q1), sc,                \
                       vmul(base, vload(s->z0 + k * W)), s->res + q1, s->res + 2 * n + q1);                      \
        }                                                                                                        \
    }
DEF_TAPS_FUSED(3)
#if W == 16
DEF_TAPS_FUSED(5)
DEF_TAPS_FUSED(7) /* 28 vectors: AVX-512 has 32 registers */
#else
DEF_TAPS_FUSED2(5)
DEF_TAPS_FUSED2(7)
#endif

/* Gradients for the upstream rows g[R, S0*S1], blocks [b0, b1): gw [R, K], gp and gs [D, R, K] (NULL where not
   wanted). Returns 0 if scratch could not be allocated. */
int dclszoo_construct_backward(const float *w, const float *p, const float *sg, const float *g, long R, int D, int K,
                               int S0, int S1, const float *lo, const float *hi, int bounded, float fl, float tail,
                               float *gw, float *gp, float *gs, long b0, long b1) {
    Scratch s;
    if (!scratch_init(&s, D, K, S0, S1)) return 0;
    int m = S0 * S1;
    for (long b = b0; b < b1; b++) {
        long r0 = b * W;
        int valid = R - r0 < W ? (int)(R - r0) : W;
        block_params(w, p, sg, R, D, K, S0, S1, lo, hi, bounded, fl, tail, r0, valid, &s);
        if (r0 + (PREFETCH_BLOCKS + 1) * W <= R) prefetch_l2(g + (r0 + PREFETCH_BLOCKS * W) * m, W * m);
        rows_in(g + r0 * m, valid, m, (R - r0) * m, s.acc, s.pad); /* the upstream gradient, lane-major [y][x] */
        if (D == 2 && S0 == S1 && (S0 == 3 || S0 == 5 || S0 == 7)) {
            if (S0 == 3) taps_fused_3(s.acc, K, &s);
            else if (S0 == 5) taps_fused_5(s.acc, K, &s);
            else taps_fused_7(s.acc, K, &s);
            write_grads(&s, R, D, K, r0, valid, gw, gp, gs);
            continue;
        } else if (D == 2) {
            /* E0[k][y] = sum_x a1[k][x] G[y][x];  E1[k][x] = sum_y a0[k][y] G[y][x] */
            gemm(s.e0, S0, 1, s.a1, S1, 1, s.acc, 1, S1, K, S0, S1, NULL);
            gemm(s.e1, S1, 1, s.a0, S0, 1, s.acc, S1, 1, K, S1, S0, NULL);
        }
        const float *e0 = D == 2 ? s.e0 : s.acc; /* 1-D: every tap sees the gradient itself */
        size_t e0_tap = D == 2 ? (size_t)S0 : 0;
        for (int k = 0; k < K; k++) { /* dL/dsc[k] = sum_y a0[k][y] E0[k][y] */
            V acc = vzero();
            for (int y = 0; y < S0; y++)
                acc = vfma(vload(s.a0 + ((size_t)k * S0 + y) * W), vload(e0 + ((size_t)k * e0_tap + y) * W), acc);
            vstore(s.gsc + k * W, acc);
        }
        if (gp || gs) {
            tap_grads(0, K, S0, S1, e0, e0_tap, &s);
            if (D == 2) tap_grads(1, K, S0, S1, s.e1, (size_t)S1, &s);
        }
        for (int k = 0; k < K; k++) vstore(s.wl + k * W, vmul(vload(s.gsc + k * W), vload(s.iden + k * W)));
        write_grads(&s, R, D, K, r0, valid, gw, gp, gs);
    }
    _mm_sfence();
    free(s.mem);
    return 1;
}

/* ------------------------------------------------------------------------- on an OpenMP runtime's threads */
/* Both kernels over all blocks on the team of the OpenMP runtime whose GOMP_parallel is `parallel` (torch's: its
   workers are the ones still spinning after torch's last parallel region, so they start at once, and no second
   pool competes with them for the cores). Chunks of blocks are taken from a shared counter. */
typedef void (*omp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef struct {
    int kind; /* 0 forward, 1 backward */
    const float *w, *p, *sg, *g;
    long R;
    int D, K, S0, S1;
    const float *lo, *hi;
    int bounded;
    float fl, tail;
    float *o0, *o1, *o2; /* forward: the kernel, NULL, NULL; backward: gw, gp, gs */
    long n_blocks;
    int n_chunks, next, ok;
} Job;

static void job_body(void *arg) {
    Job *j = (Job *)arg;
    for (;;) {
        int c = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (c >= j->n_chunks) break;
        long b0 = j->n_blocks * c / j->n_chunks, b1 = j->n_blocks * (c + 1) / j->n_chunks;
        int ok = j->kind == 0 ? dclszoo_construct_forward(j->w, j->p, j->sg, j->R, j->D, j->K, j->S0, j->S1, j->lo,
                                                          j->hi, j->bounded, j->fl, j->tail, j->o0, b0, b1)
                              : dclszoo_construct_backward(j->w, j->p, j->sg, j->g, j->R, j->D, j->K, j->S0, j->S1,
                                                           j->lo, j->hi, j->bounded, j->fl, j->tail, j->o0, j->o1,
                                                           j->o2, b0, b1);
        if (!ok) __atomic_store_n(&j->ok, 0, __ATOMIC_RELAXED);
    }
}

/* Kernel `kind` (0 forward: outputs = out; 1 backward: gw, gp, gs) over blocks [0, n_blocks) in n_chunks chunks on
   `threads` threads of the runtime of `parallel`. Returns 0 if some chunk could not allocate its scratch. */
int dclszoo_construct_omp(void *parallel, unsigned threads, int n_chunks, int kind, const float *w, const float *p,
                          const float *sg, const float *g, long R, int D, int K, int S0, int S1, const float *lo,
                          const float *hi, int bounded, float fl, float tail, float *o0, float *o1, float *o2,
                          long n_blocks) {
    Job j = {kind, w, p, sg, g, R, D, K, S0, S1, lo, hi, bounded, fl, tail, o0, o1, o2, n_blocks, n_chunks, 0, 1};
    ((omp_parallel_fn)parallel)(job_body, &j, threads, 0);
    return j.ok;
}

/* The lane count of this build (16: AVX-512, 8: AVX2). */
int dclszoo_lanes(void) { return W; }

/* ------------------------------------------------------------------------------------- module init only */
#if defined(DCLSZOO_AVX512)
#define MODNAME "_construct_avx512"
#define INITFN PyInit__construct_avx512
#else
#define MODNAME "_construct_avx2"
#define INITFN PyInit__construct_avx2
#endif
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, MODNAME, "C construction kernels (loaded with ctypes)", -1,
                                    NULL, NULL, NULL, NULL, NULL};
PyMODINIT_FUNC INITFN(void) { return PyModule_Create(&module); }
