// The F-Encoder's native CPU core, forward and backward (docs/design.md#native-cpu-core).
//
// One frame at a time, everything in registers or in a few KB of per-thread scratch that
// stays in L1: the rank-one attention with our own exponential (kernels/csrc/simd.h), both
// LayerNorms, the conv FFN as register-tiled micro-kernels, the residuals and the time
// weights. The math is kernels/freq_encoder_op/rank_one.py's; the layouts:
//
// * planar activations [channel][band], bands innermost, padded to Fp (a multiple of the
//   vector width) with a zero halo of H floats on both sides of each row, so a conv tap
//   f + j - k/2 is an unaligned load and the "same" padding is the halo;
// * the derived parameters packed by kernels/native.py (PRM_* below);
// * per frame stats for the backward: m, 1/Z and the variance of each head's softmax.
//
// Compiled once per ISA (ATFNN_ISA; setup.py); kernels/csrc/dispatch.cpp picks one at run
// time. Calls are re-entrant: all scratch is allocated per call, the caller (Python) splits
// the frames between threads and sums the per-chunk parameter gradients.
#include <math.h>
#include <stdlib.h>

#include "../csrc/simd.h"

#ifndef ATT_B
#if ATFNN_ISA == 2
#define ATT_B 4  // query/key vectors an attention pass keeps in registers
#else
#define ATT_B 2
#endif
#endif
#define OB 4  // output rows of a conv tile
#define H 8   // zero halo of a padded row: kernels up to 17 taps

namespace ISA_NS {

struct Dims {
  long B, F, T, c, h, P, k, has_wt;
  long x_s[3], wt_s[3], out_s[4], gout_s[4], dx_s[3], dwt_s[3];
};

// offsets of the packed derived parameters (and of their gradients)
struct Prm {
  long wl, e, A, Bh, U, g1, b1, W1, bf1, W2, bf2, g2, b2, total;
  Prm(long c, long h, long P, long k) {
    long o = 0;
    wl = o; o += c;
    e = o; o += c;
    A = o; o += h;
    Bh = o; o += h;
    U = o; o += h * c;
    g1 = o; o += c;
    b1 = o; o += c;
    W1 = o; o += P * c * k;
    bf1 = o; o += P;
    W2 = o; o += c * P * k;
    bf2 = o; o += c;
    g2 = o; o += c;
    b2 = o; o += c;
    total = o;
  }
};

static inline long rup(long n, long m) { return (n + m - 1) / m * m; }

// -------------------------------------------------------------------------- attention
// Forward pass over one head, vectorised over the queries f: m_f = sum_g p_fg x_g with
// p_fg = softmax_g(s_f xc_g), xc the keys centred on the frame's mean (the softmax does not
// see the shift; it keeps the variance's cancellation small). mxc_f is the row maximum,
// known without a pass. Writes m (uncentred), 1/Z and the variance sum_g p x^2 - m^2.
// Each term's exponent is one FMA, s_f x_g - mxc_f, in the natural base (its rounding is the
// float32 reference's), then scaled by log2 e into the core's exp2 (vexp). VAR: also the
// variance (the backward's).
template <int NB, bool VAR>
static inline void attn_fwd(const float* xc, long F, const float* s, const float* mxc,
                            const float* piv, float center, float* m, float* rz, float* var,
                            long v0) {
  // The weighted sums are taken about each query's pivot (the key where its row maximum
  // is: max(x) for s >= 0, else min(x)): a saturated softmax sits near it, so the mean's
  // offset and the variance S2/Z - (S1/Z)^2 lose nothing to cancellation there.
  vf sv[NB], mv[NB], pv[NB], z[NB], s1[NB], s2[NB];
  for (int b = 0; b < NB; ++b) {
    sv[b] = vload(s + (v0 + b) * VL);
    mv[b] = vload(mxc + (v0 + b) * VL);
    pv[b] = vload(piv + (v0 + b) * VL);
    z[b] = s1[b] = s2[b] = vf{};
  }
  for (long g = 0; g < F; ++g) {
    const float xg = xc[g];
    for (int b = 0; b < NB; ++b) {
      vf e = vexp(sv[b] * xg - mv[b]);
      z[b] += e;
      vf d = xg - pv[b];
      vf ed = e * d;
      s1[b] += ed;
      if (VAR) s2[b] += ed * d;
    }
  }
  for (int b = 0; b < NB; ++b) {
    vf r = 1.f / z[b];
    vf off = s1[b] * r;
    vstore(m + (v0 + b) * VL, (pv[b] + off) + center);
    vstore(rz + (v0 + b) * VL, r);
    if (VAR) vstore(var + (v0 + b) * VL, s2[b] * r - off * off);
  }
}

// Backward pass over one head, vectorised over the keys g:
// dx_g += sum_f e_fg c_f (1 + s_f (x_g - m_f)) (alpha_f = c_f, beta_f = c_f s_f, mc_f the
// centred mean), the gradient reaching the keys and the values; x_g - m_f is taken first,
// so scores of 1e3 do not cancel products of 1e5.
template <int NB>
static inline void attn_bwd(const float* xc, long F, const float* s, const float* mxc,
                            const float* alpha, const float* beta, const float* mc, float* dx,
                            long v0) {
  vf xv[NB], acc[NB];
  for (int b = 0; b < NB; ++b) {
    xv[b] = vload(xc + (v0 + b) * VL);
    acc[b] = vf{};
  }
  for (long f = 0; f < F; ++f) {
    const float sf = s[f], mf = mxc[f], a = alpha[f], bt = beta[f], cm = mc[f];
    for (int b = 0; b < NB; ++b) {
      vf e = vexp(xv[b] * sf - mf);
      acc[b] += e * ((xv[b] - cm) * bt + a);
    }
  }
  for (int b = 0; b < NB; ++b) vstore(dx + (v0 + b) * VL, vload(dx + (v0 + b) * VL) + acc[b]);
}

template <int NB, bool VAR>
static inline void attn_fwd_tail(long rem, const float* xc, long F, const float* s,
                                 const float* mxc, const float* piv, float c0, float* m,
                                 float* rz, float* var, long v0) {
  if constexpr (NB > 0) {
    if (rem == NB)
      attn_fwd<NB, VAR>(xc, F, s, mxc, piv, c0, m, rz, var, v0);
    else
      attn_fwd_tail<NB - 1, VAR>(rem, xc, F, s, mxc, piv, c0, m, rz, var, v0);
  }
}

template <bool VAR>
static void attn_fwd_all(long NV, const float* xc, long F, const float* s, const float* mxc,
                         const float* piv, float c0, float* m, float* rz, float* var) {
  long v0 = 0;
  for (; v0 + ATT_B <= NV; v0 += ATT_B)
    attn_fwd<ATT_B, VAR>(xc, F, s, mxc, piv, c0, m, rz, var, v0);
  if (v0 < NV) attn_fwd_tail<ATT_B - 1, VAR>(NV - v0, xc, F, s, mxc, piv, c0, m, rz, var, v0);
}

template <int NB>
static inline void attn_bwd_tail(long rem, const float* xc, long F, const float* s,
                                 const float* mxc, const float* al, const float* be,
                                 const float* mc, float* dx, long v0) {
  if constexpr (NB > 0) {
    if (rem == NB)
      attn_bwd<NB>(xc, F, s, mxc, al, be, mc, dx, v0);
    else
      attn_bwd_tail<NB - 1>(rem, xc, F, s, mxc, al, be, mc, dx, v0);
  }
}

// -------------------------------------------------------------------------- conv FFN
// out[o][f] = act(bias[o] + res[o][f] + sum_{i,j} W[o][i][j] in[i][f + j - K/2]) for OB rows
// and NB vectors of bands; `in` points at the first band of row 0 (rows ld apart, halo of
// zeros around them).
template <int NO, int NB>
static inline void conv_tile(const float* W, long I, long K, const float* in, long ld, long o0,
                             long v0, const float* bias, const float* res, long ldr, float* out,
                             long ldo, bool relu) {
  vf acc[NO][NB];
  for (int ob = 0; ob < NO; ++ob)
    for (int b = 0; b < NB; ++b) {
      vf a = vset(bias ? bias[o0 + ob] : 0.f);
      if (res) a += vload(res + (o0 + ob) * ldr + (v0 + b) * VL);
      acc[ob][b] = a;
    }
  const long pad = K / 2;
  for (long i = 0; i < I; ++i) {
    const float* src = in + i * ld + v0 * VL - pad;
    const float* w = W + (o0 * I + i) * K;
    for (long j = 0; j < K; ++j) {
      vf xv[NB];
      for (int b = 0; b < NB; ++b) xv[b] = vload(src + j + b * VL);
      for (int ob = 0; ob < NO; ++ob) {
        const float wv = w[ob * I * K + j];
        for (int b = 0; b < NB; ++b) acc[ob][b] += wv * xv[b];
      }
    }
  }
  for (int ob = 0; ob < NO; ++ob)
    for (int b = 0; b < NB; ++b) {
      vf a = acc[ob][b];
      if (relu) a = a < 0.f ? vset(0.f) : a;  // NaN stays NaN, as torch.relu
      vstore(out + (o0 + ob) * ldo + (v0 + b) * VL, a);
    }
}

template <int NO, int NB>
static inline void conv_tail(long rem, const float* W, long I, long K, const float* in, long ld,
                             long o0, long v0, const float* bias, const float* res, long ldr,
                             float* out, long ldo, bool relu) {
  if constexpr (NB > 0) {
    if (rem == NB)
      conv_tile<NO, NB>(W, I, K, in, ld, o0, v0, bias, res, ldr, out, ldo, relu);
    else
      conv_tail<NO, NB - 1>(rem, W, I, K, in, ld, o0, v0, bias, res, ldr, out, ldo, relu);
  }
}

template <int NO>
static inline void conv_rows(const float* W, long I, long K, const float* in, long ld, long NV,
                             long o0, const float* bias, const float* res, long ldr, float* out,
                             long ldo, bool relu) {
  long v0 = 0;
  for (; v0 + FB_MAX <= NV; v0 += FB_MAX)
    conv_tile<NO, FB_MAX>(W, I, K, in, ld, o0, v0, bias, res, ldr, out, ldo, relu);
  if (v0 < NV) conv_tail<NO, FB_MAX - 1>(NV - v0, W, I, K, in, ld, o0, v0, bias, res, ldr, out,
                                         ldo, relu);
}

static void conv(const float* W, long O, long I, long K, const float* in, long ld, long NV,
                 const float* bias, const float* res, long ldr, float* out, long ldo, bool relu) {
  long o0 = 0;
  for (; o0 + OB <= O; o0 += OB)
    conv_rows<OB>(W, I, K, in, ld, NV, o0, bias, res, ldr, out, ldo, relu);
  for (; o0 < O; ++o0) conv_rows<1>(W, I, K, in, ld, NV, o0, bias, res, ldr, out, ldo, relu);
}

// acc[o][i][j] (VL partial sums each) += sum_f g[o][f] in[i][f + j - K/2]: the conv's weight
// gradient for one frame; g's padded lanes are zero.
template <int NO, int NB>
static inline void wgrad_tile(const float* g, long ldg, const float* in, long ld, long I, long K,
                              long o0, long v0, float* acc) {
  vf gv[NO][NB];
  for (int ob = 0; ob < NO; ++ob)
    for (int b = 0; b < NB; ++b) gv[ob][b] = vload(g + (o0 + ob) * ldg + (v0 + b) * VL);
  const long pad = K / 2;
  for (long i = 0; i < I; ++i)
    for (long j = 0; j < K; ++j) {
      vf xv[NB];
      for (int b = 0; b < NB; ++b) xv[b] = vload(in + i * ld + (v0 + b) * VL + j - pad);
      for (int ob = 0; ob < NO; ++ob) {
        vf s = gv[ob][0] * xv[0];
        for (int b = 1; b < NB; ++b) s += gv[ob][b] * xv[b];
        float* a = acc + (((o0 + ob) * I + i) * K + j) * VL;
        vstore(a, vload(a) + s);
      }
    }
}

template <int NO, int NB>
static inline void wgrad_tail(long rem, const float* g, long ldg, const float* in, long ld,
                              long I, long K, long o0, long v0, float* acc) {
  if constexpr (NB > 0) {
    if (rem == NB)
      wgrad_tile<NO, NB>(g, ldg, in, ld, I, K, o0, v0, acc);
    else
      wgrad_tail<NO, NB - 1>(rem, g, ldg, in, ld, I, K, o0, v0, acc);
  }
}

template <int NO>
static inline void wgrad_rows(const float* g, long ldg, const float* in, long ld, long I, long K,
                              long NV, long o0, float* acc) {
  long v0 = 0;
  for (; v0 + FB_MAX <= NV; v0 += FB_MAX) wgrad_tile<NO, FB_MAX>(g, ldg, in, ld, I, K, o0, v0, acc);
  if (v0 < NV) wgrad_tail<NO, FB_MAX - 1>(NV - v0, g, ldg, in, ld, I, K, o0, v0, acc);
}

static void wgrad(const float* g, long ldg, long O, const float* in, long ld, long I, long K,
                  long NV, float* acc) {
  long o0 = 0;
  for (; o0 + OB <= O; o0 += OB) wgrad_rows<OB>(g, ldg, in, ld, I, K, NV, o0, acc);
  for (; o0 < O; ++o0) wgrad_rows<1>(g, ldg, in, ld, I, K, NV, o0, acc);
}

// -------------------------------------------------------------------------- LayerNorm
// over the C planar rows of r (ld apart), per band: y = n g + b with n = (r - mean) rstd;
// n and rstd kept where asked (the backward's).
static void ln_fwd(const float* r, long ldr, long C, const float* g, const float* bb, float eps,
                   long NV, float* y, long ldy, float* n, long ldn, float* rstd) {
  const float inv = 1.f / (float)C;
  for (long v = 0; v < NV; ++v) {
    vf mu = vf{};
    for (long ch = 0; ch < C; ++ch) mu += vload(r + ch * ldr + v * VL);
    mu *= inv;
    vf var = vf{};
    for (long ch = 0; ch < C; ++ch) {
      vf d = vload(r + ch * ldr + v * VL) - mu;
      var += d * d;
    }
    var = var * inv + eps;
    vf rs;
    for (int l = 0; l < VL; ++l) rs[l] = 1.f / sqrtf(var[l]);
    if (rstd) vstore(rstd + v * VL, rs);
    for (long ch = 0; ch < C; ++ch) {
      vf nn = (vload(r + ch * ldr + v * VL) - mu) * rs;
      if (n) vstore(n + ch * ldn + v * VL, nn);
      vstore(y + ch * ldy + v * VL, nn * g[ch] + bb[ch]);
    }
  }
}

// dr = rstd (dn - mean_c(dn) - n mean_c(dn n)) with dn = dy g; dg += dy n, db += dy (vector
// partials); dy's padded lanes are zero, so are dr's.
static void ln_bwd(const float* dy, long ldd, const float* n, long ldn, const float* rstd,
                   long C, const float* g, long NV, float* dr, long lddr, float* dg, float* db) {
  const float inv = 1.f / (float)C;
  for (long v = 0; v < NV; ++v) {
    vf s1 = vf{}, s2 = vf{};
    for (long ch = 0; ch < C; ++ch) {
      vf d = vload(dy + ch * ldd + v * VL), nn = vload(n + ch * ldn + v * VL);
      vf dn = d * g[ch];
      s1 += dn;
      s2 += dn * nn;
      vstore(dg + ch * VL, vload(dg + ch * VL) + d * nn);
      vstore(db + ch * VL, vload(db + ch * VL) + d);
    }
    s1 *= inv;
    s2 *= inv;
    vf rs = vload(rstd + v * VL);
    for (long ch = 0; ch < C; ++ch) {
      vf dn = vload(dy + ch * ldd + v * VL) * g[ch];
      vstore(dr + ch * lddr + v * VL, (dn - s1 - vload(n + ch * ldn + v * VL) * s2) * rs);
    }
  }
}

// -------------------------------------------------------------------------- one frame
struct Scratch {
  long F, Fp, NV, LD, c, h, P, k;
  float *xs, *xc, *s, *mxc, *m, *rz, *var, *r, *y1, *n1, *rstd1, *a1, *y2, *n2, *rstd2;
  float *d1, *d2, *d3, *dP, *dxa, *al, *be;
  void* mem;
  bool ok;

  Scratch(const Dims& d) {
    F = d.F, Fp = rup(d.F, VL), NV = Fp / VL, LD = Fp + 2 * H, c = d.c, h = d.h, P = d.P, k = d.k;
    long hF = h * Fp, cLD = c * LD, PLD = P * LD;
    long sizes[] = {Fp, Fp, hF, hF, hF, hF, hF, c * Fp, cLD, c * Fp, Fp, PLD, c * Fp, c * Fp,
                    Fp, cLD, cLD, cLD, PLD, Fp, Fp, Fp};
    long total = 0;
    for (long q : sizes) total += rup(q, 16);
    mem = aligned_alloc(64, (size_t)rup(total * 4, 64));
    ok = mem != nullptr;
    if (!ok) return;
    memset(mem, 0, (size_t)total * 4);  // halos and padded lanes start at zero
    float* p = (float*)mem;
    float** slots[] = {&xs, &xc, &s, &mxc, &m, &rz, &var, &r, &y1, &n1, &rstd1, &a1,
                       &y2, &n2, &rstd2, &d1, &d2, &d3, &dP, &dxa, &al, &be};
    for (int q = 0; q < (int)(sizeof sizes / sizeof sizes[0]); ++q) {
      *slots[q] = p;
      p += rup(sizes[q], 16);
    }
    // rows with a halo: point at the first band
    y1 += H, d1 += H, d2 += H, d3 += H, a1 += H, dP += H;
  }
  ~Scratch() { free(mem); }
  void zero_tail(float* rows, long n, long ld) const {  // padded lanes F..Fp of n rows
    if (Fp > F)
      for (long q = 0; q < n; ++q) memset(rows + q * ld + F, 0, (size_t)(Fp - F) * 4);
  }
};

// x of frame (b, t) into sc.xs, centred copy into sc.xc; returns the centre.
static float load_frame(const Dims& d, const float* x, long b, long t, Scratch& sc) {
  const float* xp = x + b * d.x_s[0] + t * d.x_s[2];
  float sum = 0.f;
  for (long f = 0; f < d.F; ++f) {
    sc.xs[f] = xp[f * d.x_s[1]];
    sum += sc.xs[f];
  }
  const float center = sum / (float)d.F;
  for (long f = 0; f < d.F; ++f) sc.xc[f] = sc.xs[f] - center;
  return center;
}

// The attention's forward for every head: s, mxc, and m / 1/Z / var (computed, or read from
// the saved stats).
static void attention(const Dims& d, const float* prm, const Prm& o, float center, Scratch& sc,
                      const float* stats_in, float* stats_out, bool want_var) {
  float xmin = sc.xc[0], xmax = sc.xc[0];
  for (long f = 1; f < d.F; ++f) {
    xmin = sc.xc[f] < xmin ? sc.xc[f] : xmin;
    xmax = sc.xc[f] > xmax ? sc.xc[f] : xmax;
  }
  for (long hh = 0; hh < d.h; ++hh) {
    const float A = prm[o.A + hh], Bh = prm[o.Bh + hh];
    float *s = sc.s + hh * sc.Fp, *mx = sc.mxc + hh * sc.Fp;
    float *m = sc.m + hh * sc.Fp, *rz = sc.rz + hh * sc.Fp, *var = sc.var + hh * sc.Fp;
    float* piv = sc.al;  // the query's pivot key (free until the backward's attention step)
    for (long f = 0; f < sc.Fp; ++f) {
      const float sf = sc.xs[f] * A + Bh;
      s[f] = sf;
      mx[f] = sf >= 0.f ? sf * xmax : sf * xmin;
      piv[f] = sf >= 0.f ? xmax : xmin;
    }
    if (stats_in) {
      for (long f = 0; f < d.F; ++f) {
        m[f] = stats_in[(hh * 3 + 0) * d.F + f];
        rz[f] = stats_in[(hh * 3 + 1) * d.F + f];
        var[f] = stats_in[(hh * 3 + 2) * d.F + f];
      }
      continue;
    }
    if (want_var)
      attn_fwd_all<true>(sc.NV, sc.xc, d.F, s, mx, piv, center, m, rz, var);
    else
      attn_fwd_all<false>(sc.NV, sc.xc, d.F, s, mx, piv, center, m, rz, var);
    if (stats_out)
      for (long f = 0; f < d.F; ++f) {
        stats_out[(hh * 3 + 0) * d.F + f] = m[f];
        stats_out[(hh * 3 + 1) * d.F + f] = rz[f];
        stats_out[(hh * 3 + 2) * d.F + f] = var[f];
      }
  }
}

// Everything after the attention, to LayerNorm2's output sc.y2 (with what the backward needs).
static void encode(const Dims& d, const float* prm, const Prm& o, float eps, Scratch& sc,
                   const float* W2) {
  const long c = d.c, Fp = sc.Fp, NV = sc.NV, LD = sc.LD;
  // the token r = wl x + sum_h U_h m_h + e
  for (long ch = 0; ch < c; ++ch)
    for (long v = 0; v < NV; ++v) {
      vf r = vload(sc.xs + v * VL) * prm[o.wl + ch] + prm[o.e + ch];
      for (long hh = 0; hh < d.h; ++hh) r += vload(sc.m + hh * Fp + v * VL) * prm[o.U + hh * c + ch];
      vstore(sc.r + ch * Fp + v * VL, r);
    }
  ln_fwd(sc.r, Fp, c, prm + o.g1, prm + o.b1, eps, NV, sc.y1, LD, sc.n1, Fp, sc.rstd1);
  sc.zero_tail(sc.y1, c, LD);
  conv(prm + o.W1, d.P, c, d.k, sc.y1, LD, NV, prm + o.bf1, nullptr, 0, sc.a1, LD, true);
  sc.zero_tail(sc.a1, d.P, LD);
  // r2 = y1 + FFN2(a1), into d1 (free until the backward)
  conv(W2, c, d.P, d.k, sc.a1, LD, NV, prm + o.bf2, sc.y1, LD, sc.d1, LD, false);
  ln_fwd(sc.d1, LD, c, prm + o.g2, prm + o.b2, eps, NV, sc.y2, Fp, sc.n2, Fp, sc.rstd2);
}

// -------------------------------------------------------------------------- entry points
int forward(const Dims& d, float eps, const float* x, const float* wt, const float* prm,
            float* out, float* stats, long n0, long n1) {
  Scratch sc(d);
  if (!sc.ok) return 2;
  const Prm o(d.c, d.h, d.P, d.k);
  for (long n = n0; n < n1; ++n) {
    const long b = n / d.T, t = n % d.T;
    const float center = load_frame(d, x, b, t, sc);
    // the variance always (one FMA a term): without it the compiler schedules the pass
    // differently and inference would differ from training's forward in the last bit
    attention(d, prm, o, center, sc, nullptr, stats ? stats + n * d.h * 3 * d.F : nullptr, true);
    encode(d, prm, o, eps, sc, prm + o.W2);
    float* op = out + b * d.out_s[0] + t * d.out_s[1];
    const float* wp = d.has_wt ? wt + b * d.wt_s[0] + t * d.wt_s[2] : nullptr;
    for (long f = 0; f < d.F; ++f) {
      const float scale = wp ? 1.f + wp[f * d.wt_s[1]] : 1.f;
      for (long ch = 0; ch < d.c; ++ch)
        op[f * d.out_s[2] + ch * d.out_s[3]] = sc.y2[ch * sc.Fp + f] * scale;
    }
  }
  return 0;
}

int backward(const Dims& d, float eps, const float* x, const float* wt, const float* prm,
             const float* stats, const float* gout, float* dx, float* dwt, float* dprm, long n0,
             long n1) {
  Scratch sc(d);
  if (!sc.ok) return 2;
  const Prm o(d.c, d.h, d.P, d.k);
  const long c = d.c, P = d.P, K = d.k, Fp = sc.Fp, NV = sc.NV, LD = sc.LD, F = d.F;
  // flipped, transposed conv weights for the data gradients: WT[i][o][K-1-j] = W[o][i][j]
  float* wmem = (float*)malloc((size_t)(2 * P * c * K + o.total * VL) * 4);
  double* total = (double*)calloc((size_t)o.total, sizeof(double));
  if (!wmem || !total) {
    free(wmem);
    free(total);
    return 2;
  }
  float *W1T = wmem, *W2T = wmem + P * c * K, *acc = wmem + 2 * P * c * K;
  for (long p = 0; p < P; ++p)
    for (long ch = 0; ch < c; ++ch)
      for (long j = 0; j < K; ++j) {
        W1T[(ch * P + p) * K + K - 1 - j] = prm[o.W1 + (p * c + ch) * K + j];
        W2T[(p * c + ch) * K + K - 1 - j] = prm[o.W2 + (ch * P + p) * K + j];
      }
  memset(acc, 0, (size_t)o.total * VL * 4);
  float* A_ = acc;  // vector partials of every parameter gradient, at o.* * VL
#define ACC(field) (A_ + o.field * VL)

  // The parameter gradients sum over every band of every frame: float32 vector partials over
  // FLUSH frames at a time, then added into float64 totals (a sum over thousands of frames
  // in float32 alone lost up to 1e-5 of the result where its terms cancel).
  const long FLUSH = 8;
  auto flush = [&]() {
    for (long q = 0; q < o.total; ++q) {
      double s = 0.0;
      for (int l = 0; l < VL; ++l) s += acc[q * VL + l];
      total[q] += s;
    }
    memset(acc, 0, (size_t)o.total * VL * 4);
  };
  for (long n = n0; n < n1; ++n) {
    if (n > n0 && (n - n0) % FLUSH == 0) flush();
    const long b = n / d.T, t = n % d.T;
    const float center = load_frame(d, x, b, t, sc);
    attention(d, prm, o, center, sc, stats ? stats + n * d.h * 3 * d.F : nullptr, nullptr, true);
    encode(d, prm, o, eps, sc, prm + o.W2);
    // dY (planar, into d1) from the output gradient, the time weights' gradient
    const float* gp = gout + b * d.gout_s[0] + t * d.gout_s[1];
    const float* wp = d.has_wt ? wt + b * d.wt_s[0] + t * d.wt_s[2] : nullptr;
    float* dwp = d.has_wt ? dwt + b * d.dwt_s[0] + t * d.dwt_s[2] : nullptr;
    for (long f = 0; f < F; ++f) {
      const float scale = wp ? 1.f + wp[f * d.wt_s[1]] : 1.f;
      float dw = 0.f;
      for (long ch = 0; ch < c; ++ch) {
        const float go = gp[f * d.gout_s[2] + ch * d.gout_s[3]];
        dw += go * sc.y2[ch * Fp + f];
        sc.d1[ch * LD + f] = go * scale;
      }
      if (dwp) dwp[f * d.dwt_s[1]] = dw;
    }
    sc.zero_tail(sc.d1, c, LD);  // the forward left LayerNorm2's input in d1's padded lanes
    // LayerNorm2: dr2 into d2 (halo rows)
    ln_bwd(sc.d1, LD, sc.n2, Fp, sc.rstd2, c, prm + o.g2, NV, sc.d2, LD, ACC(g2), ACC(b2));
    // FFN2: bias and weight gradients, then da1 = conv(dr2, W2T) masked by the ReLU -> dP
    for (long ch = 0; ch < c; ++ch)
      for (long v = 0; v < NV; ++v)
        vstore(ACC(bf2) + ch * VL, vload(ACC(bf2) + ch * VL) + vload(sc.d2 + ch * LD + v * VL));
    wgrad(sc.d2, LD, c, sc.a1, LD, P, K, NV, ACC(W2));
    conv(W2T, P, c, K, sc.d2, LD, NV, nullptr, nullptr, 0, sc.dP, LD, false);
    for (long p = 0; p < P; ++p)
      for (long v = 0; v < NV; ++v) {
        vf a = vload(sc.a1 + p * LD + v * VL), g = vload(sc.dP + p * LD + v * VL);
        g = a > 0.f ? g : vset(0.f);  // a1's padded lanes are 0: so are dh1's
        vstore(sc.dP + p * LD + v * VL, g);
        vstore(ACC(bf1) + p * VL, vload(ACC(bf1) + p * VL) + g);
      }
    // FFN1: weight gradient; dy1 = conv(dh1, W1T) + dr2 -> d3
    wgrad(sc.dP, LD, P, sc.y1, LD, c, K, NV, ACC(W1));
    conv(W1T, c, P, K, sc.dP, LD, NV, nullptr, sc.d2, LD, sc.d3, LD, false);
    sc.zero_tail(sc.d3, c, LD);
    // LayerNorm1: dr -> d1
    ln_bwd(sc.d3, LD, sc.n1, Fp, sc.rstd1, c, prm + o.g1, NV, sc.d1, LD, ACC(g1), ACC(b1));
    // the token r = wl x + sum_h U_h m_h + e: dx (direct), dm per head (into al), grads
    for (long v = 0; v < NV; ++v) {
      vf xv = vload(sc.xs + v * VL), dxv = vf{};
      for (long ch = 0; ch < c; ++ch) {
        vf dr = vload(sc.d1 + ch * LD + v * VL);
        dxv += dr * prm[o.wl + ch];
        vstore(ACC(wl) + ch * VL, vload(ACC(wl) + ch * VL) + dr * xv);
        vstore(ACC(e) + ch * VL, vload(ACC(e) + ch * VL) + dr);
      }
      vstore(sc.dxa + v * VL, dxv);
    }
    for (long hh = 0; hh < d.h; ++hh) {
      const float A = prm[o.A + hh];
      const float *s = sc.s + hh * Fp, *m = sc.m + hh * Fp, *rz = sc.rz + hh * Fp;
      const float *var = sc.var + hh * Fp, *mx = sc.mxc + hh * Fp;
      for (long v = 0; v < NV; ++v) {
        vf mv = vload(m + v * VL), dm = vf{};
        for (long ch = 0; ch < c; ++ch) {
          vf dr = vload(sc.d1 + ch * LD + v * VL);
          dm += dr * prm[o.U + hh * c + ch];
          float* u = ACC(U) + (hh * c + ch) * VL;
          vstore(u, vload(u) + dr * mv);
        }
        // padded lanes: dr is 0 there, so dm, ds, alpha and beta are 0
        vf ds = dm * vload(var + v * VL);
        vstore(sc.dxa + v * VL, vload(sc.dxa + v * VL) + ds * A);
        float* pa = ACC(A) + hh * VL;
        vstore(pa, vload(pa) + ds * vload(sc.xs + v * VL));
        float* pb = ACC(Bh) + hh * VL;
        vstore(pb, vload(pb) + ds);
        vf cf = dm * vload(rz + v * VL), sv = vload(s + v * VL);
        vstore(sc.al + v * VL, cf);
        vstore(sc.be + v * VL, cf * sv);
        vstore(sc.r + v * VL, mv - center);  // the centred mean (r is free by now)
      }
      long v0 = 0;
      for (; v0 + ATT_B <= NV; v0 += ATT_B)
        attn_bwd<ATT_B>(sc.xc, F, s, mx, sc.al, sc.be, sc.r, sc.dxa, v0);
      if (v0 < NV)
        attn_bwd_tail<ATT_B - 1>(NV - v0, sc.xc, F, s, mx, sc.al, sc.be, sc.r, sc.dxa, v0);
    }
    float* dxp = dx + b * d.dx_s[0] + t * d.dx_s[2];
    for (long f = 0; f < F; ++f) dxp[f * d.dx_s[1]] = sc.dxa[f];
  }
#undef ACC
  flush();
  for (long q = 0; q < o.total; ++q) dprm[q] = (float)total[q];
  free(wmem);
  free(total);
  return 0;
}

}  // namespace ISA_NS

extern "C" {
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
int CAT(atfnn_fenc_forward_, ISA_NS)(const long* dims, float eps, const float* x,
                                      const float* wt, const float* prm, float* out,
                                      float* stats, long n0, long n1) {
  return ISA_NS::forward(*(const ISA_NS::Dims*)dims, eps, x, wt, prm, out, stats, n0, n1);
}
int CAT(atfnn_fenc_backward_, ISA_NS)(const long* dims, float eps, const float* x,
                                       const float* wt, const float* prm, const float* stats,
                                       const float* gout, float* dx, float* dwt, float* dprm,
                                       long n0, long n1) {
  return ISA_NS::backward(*(const ISA_NS::Dims*)dims, eps, x, wt, prm, stats, gout, dx, dwt,
                          dprm, n0, n1);
}
}
