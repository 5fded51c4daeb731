// Band attention (F- and T-Attention) on the native CPU core, forward and backward
// (docs/design.md#native-cpu-core): the windowed conv (window = stride), sigmoid, the mean over
// the output channels, the spread over each window and the re-weighting, one batch item at a
// time, with no repeat_interleave and no intermediate copies. The math is reference.py's:
//
//   a[o][i][j] = sigmoid(bias[o] + sum_{ci,u,v} W[o][ci][u][v] src[ci][i kf + u][j kt + v])
//   w[f][t]    = mean_o a[o][f / kf][t / kt]
//   out        = target * (1 + w)   (target = the source itself without an encoding target)
//
// Layouts (contiguous): src (B, Cin, F, T), W (C, Cin, kf, kt), target (B, T, F, Wd), the
// weight map (B, F, T), the window activations (B, C, n1, n2). Compiled per ISA like every
// kernel of the core (kernels/csrc/simd.h); the sigmoid uses the core's exponential.
#include <stdlib.h>

#include "../csrc/simd.h"

namespace ISA_NS {

struct BaDims {
  long B, Cin, F, T, C, kf, kt, Wd;  // Wd = 0: no target (the source is re-weighted)
};

static inline vf vsigmoid(vf v) {
  vf neg = v < 0.f ? v : -v;  // -|z| (NaN stays NaN)
  vf u = vexp(neg);
  vf s = 1.f / (1.f + u);
  return v < 0.f ? u * s : s;
}

// sigmoid of n values in place
static void sigmoid_inplace(float* z, long n) {
  long q = 0;
  for (; q + VL <= n; q += VL) vstore(z + q, vsigmoid(vload(z + q)));
  if (q < n) {  // the tail, through a zero-padded vector
    float buf[VL] = {0};
    memcpy(buf, z + q, (size_t)(n - q) * 4);
    vstore(buf, vsigmoid(vload(buf)));
    memcpy(z + q, buf, (size_t)(n - q) * 4);
  }
}

// the window activations of batch item b into a (C, n1, n2), and the weight map (F, T)
static void activations(const BaDims& d, const float* src, const float* W, const float* bias,
                        float* a, float* wmap) {
  const long n1 = d.F / d.kf, n2 = d.T / d.kt, nw = n1 * n2;
  for (long o = 0; o < d.C; ++o) {
    float* ao = a + o * nw;
    for (long q = 0; q < nw; ++q) ao[q] = bias[o];
    for (long ci = 0; ci < d.Cin; ++ci)
      for (long u = 0; u < d.kf; ++u)
        for (long v = 0; v < d.kt; ++v) {
          const float wv = W[((o * d.Cin + ci) * d.kf + u) * d.kt + v];
          for (long i = 0; i < n1; ++i) {
            const float* row = src + (ci * d.F + i * d.kf + u) * d.T + v;
            float* ai = ao + i * n2;
            for (long j = 0; j < n2; ++j) ai[j] += wv * row[j * d.kt];
          }
        }
  }
  sigmoid_inplace(a, d.C * nw);
  const float inv = 1.f / (float)d.C;
  for (long i = 0; i < n1; ++i) {
    float* w0 = wmap + i * d.kf * d.T;  // the first band of the group
    for (long j = 0; j < n2; ++j) {
      float m = 0.f;
      for (long o = 0; o < d.C; ++o) m += a[o * nw + i * n2 + j];
      m *= inv;
      for (long v = 0; v < d.kt; ++v) w0[j * d.kt + v] = m;
    }
    for (long u = 1; u < d.kf; ++u) memcpy(w0 + u * d.T, w0, (size_t)d.T * 4);
  }
}

int ba_forward(const BaDims& d, const float* src, const float* W, const float* bias,
               const float* target, float* out, float* wmap, float* act, long b0, long b1) {
  const long n1 = d.F / d.kf, n2 = d.T / d.kt, FT = d.F * d.T;
  float* own = act ? nullptr : (float*)malloc((size_t)(d.C * n1 * n2) * 4);
  if (!act && !own) return 2;
  for (long b = b0; b < b1; ++b) {
    float* a = act ? act + b * d.C * n1 * n2 : own;
    const float* s = src + b * d.Cin * FT;
    float* wm = wmap + b * FT;
    activations(d, s, W, bias, a, wm);
    if (!out) continue;
    if (d.Wd == 0) {
      for (long ci = 0; ci < d.Cin; ++ci)
        for (long q = 0; q < FT; ++q) out[(b * d.Cin + ci) * FT + q] = s[ci * FT + q] * (1.f + wm[q]);
    } else {
      const float* tg = target + b * d.T * d.F * d.Wd;
      float* ot = out + b * d.T * d.F * d.Wd;
      for (long t = 0; t < d.T; ++t)
        for (long f = 0; f < d.F; ++f) {
          const float sc = 1.f + wm[f * d.T + t];
          const long base = (t * d.F + f) * d.Wd;
          for (long w = 0; w < d.Wd; ++w) ot[base + w] = tg[base + w] * sc;
        }
    }
  }
  free(own);
  return 0;
}

// Gradients: gout (the output's, may be null), gmap (the weight map's, may be null) ->
// dsrc, dtarget (with a target), and per-chunk dW (C*Cin*kf*kt) and dbias (C) partial sums.
// act: the forward's window activations (recomputed where null).
int ba_backward(const BaDims& d, const float* src, const float* W, const float* bias,
                const float* target, const float* act, const float* gout, const float* gmap,
                float* dsrc, float* dtarget, float* dW, float* dbias, long b0, long b1) {
  const long n1 = d.F / d.kf, n2 = d.T / d.kt, nw = n1 * n2, FT = d.F * d.T;
  const long nW = d.C * d.Cin * d.kf * d.kt;
  float* mem = (float*)malloc((size_t)(d.C * nw * 2 + FT * 2 + nw) * 4);
  if (!mem) return 2;
  float *own_a = mem, *dz = mem + d.C * nw, *wm = dz + d.C * nw, *dpos = wm + FT;
  float* dwin = dpos + FT;
  memset(dW, 0, (size_t)nW * 4);
  memset(dbias, 0, (size_t)d.C * 4);
  for (long b = b0; b < b1; ++b) {
    const float* s = src + b * d.Cin * FT;
    const float* a = act ? act + b * d.C * nw : own_a;
    if (act) {  // the weight map from the kept activations
      const float inv = 1.f / (float)d.C;
      for (long i = 0; i < n1; ++i)
        for (long j = 0; j < n2; ++j) {
          float m = 0.f;
          for (long o = 0; o < d.C; ++o) m += a[o * nw + i * n2 + j];
          m *= inv;
          for (long u = 0; u < d.kf; ++u)
            for (long v = 0; v < d.kt; ++v) wm[(i * d.kf + u) * d.T + j * d.kt + v] = m;
        }
    } else {
      activations(d, s, W, bias, own_a, wm);
    }
    // dpos = d out / d w (summed over what w multiplies) + the map's own gradient
    for (long q = 0; q < FT; ++q) dpos[q] = gmap ? gmap[b * FT + q] : 0.f;
    float* ds = dsrc + b * d.Cin * FT;
    if (d.Wd == 0) {
      for (long ci = 0; ci < d.Cin; ++ci)
        for (long q = 0; q < FT; ++q) {
          const float g = gout ? gout[(b * d.Cin + ci) * FT + q] : 0.f;
          dpos[q] += g * s[ci * FT + q];
          ds[ci * FT + q] = g * (1.f + wm[q]);
        }
    } else {
      const float* tg = target + b * d.T * d.F * d.Wd;
      float* dt = dtarget + b * d.T * d.F * d.Wd;
      for (long t = 0; t < d.T; ++t)
        for (long f = 0; f < d.F; ++f) {
          const long base = (t * d.F + f) * d.Wd;
          const float sc = 1.f + wm[f * d.T + t];
          float acc = 0.f;
          for (long w = 0; w < d.Wd; ++w) {
            const float g = gout ? gout[b * d.T * d.F * d.Wd + base + w] : 0.f;
            acc += g * tg[base + w];
            dt[base + w] = g * sc;
          }
          dpos[f * d.T + t] += acc;
        }
      for (long q = 0; q < d.Cin * FT; ++q) ds[q] = 0.f;
    }
    // each window's sum, then through the mean and the sigmoid
    for (long q = 0; q < nw; ++q) dwin[q] = 0.f;
    for (long f = 0; f < d.F; ++f)
      for (long t = 0; t < d.T; ++t) dwin[(f / d.kf) * n2 + t / d.kt] += dpos[f * d.T + t];
    const float inv = 1.f / (float)d.C;
    for (long o = 0; o < d.C; ++o)
      for (long q = 0; q < nw; ++q) {
        const float av = a[o * nw + q];
        const float z = dwin[q] * inv * av * (1.f - av);
        dz[o * nw + q] = z;
        dbias[o] += z;
      }
    // the strided conv's gradients: each source element lies in exactly one window
    for (long o = 0; o < d.C; ++o)
      for (long ci = 0; ci < d.Cin; ++ci)
        for (long u = 0; u < d.kf; ++u)
          for (long v = 0; v < d.kt; ++v) {
            const long widx = ((o * d.Cin + ci) * d.kf + u) * d.kt + v;
            const float wv = W[widx];
            float gw = 0.f;
            for (long i = 0; i < n1; ++i) {
              const float* zi = dz + o * nw + i * n2;
              const long row = (ci * d.F + i * d.kf + u) * d.T + v;
              for (long j = 0; j < n2; ++j) {
                gw += zi[j] * s[row + j * d.kt];
                ds[row + j * d.kt] += zi[j] * wv;
              }
            }
            dW[widx] += gw;
          }
  }
  free(mem);
  return 0;
}

}  // namespace ISA_NS

extern "C" {
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
int CAT(atfnn_ba_forward_, ISA_NS)(const long* dims, const float* src, const float* W,
                                    const float* bias, const float* target, float* out,
                                    float* wmap, float* act, long b0, long b1) {
  return ISA_NS::ba_forward(*(const ISA_NS::BaDims*)dims, src, W, bias, target, out, wmap, act,
                            b0, b1);
}
int CAT(atfnn_ba_backward_, ISA_NS)(const long* dims, const float* src, const float* W,
                                     const float* bias, const float* target, const float* act,
                                     const float* gout, const float* gmap, float* dsrc,
                                     float* dtarget, float* dW, float* dbias, long b0, long b1) {
  return ISA_NS::ba_backward(*(const ISA_NS::BaDims*)dims, src, W, bias, target, act, gout, gmap,
                             dsrc, dtarget, dW, dbias, b0, b1);
}
}
