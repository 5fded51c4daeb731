// Shared SIMD pieces of the native CPU core (docs/design.md#native-cpu-core): the vector type
// of the ISA this translation unit is compiled for, unaligned loads and stores, and our own
// max-shifted exponential. Each kernel source is compiled once per ISA (setup.py) with
// ATFNN_ISA set to 2 (AVX-512), 1 (AVX2 + FMA) or 0 (generic: the compiler's baseline, SSE2
// on x86-64, NEON on AArch64, scalar code elsewhere); the vector width follows from it.
// GCC/Clang vector extensions: no intrinsics, so one source serves every ISA.
#pragma once
#include <stdint.h>
#include <string.h>

#ifndef ATFNN_ISA
#define ATFNN_ISA 0
#endif

#if ATFNN_ISA == 2
#define VL 16      // floats per vector
#define FB_MAX 5   // f-vectors a conv micro-kernel keeps in registers (32 vector registers)
#define ISA_NS isa_avx512
#elif ATFNN_ISA == 1
#define VL 8
#define FB_MAX 2   // 16 vector registers
#define ISA_NS isa_avx2
#else
#define VL 4
#define FB_MAX 2
#define ISA_NS isa_generic
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

static inline vf vload(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vset(float s) { return vf{} + s; }
static inline float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < VL; ++l) s += v[l];
  return s;
}

// exp(t) for t <= 0 (a max-shifted softmax exponent), within 2 ulp of expf on [-87, 0]:
// t = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes' expf coefficients)
// and 2^n put into the exponent field. t < -87.3 gives about 1e-38 (exp underflows there
// anyway, and the softmax sums hold at least one 1); t > 0 (rounding) is taken as 0; NaN stays
// NaN (every comparison with NaN is false, and the polynomial carries it).
static inline vf vexp(vf t) {
  t = t < -87.3f ? vset(-87.3f) : t;
  t = t > 0.f ? vset(0.f) : t;
  const vf magic = vset(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (t * 1.44269504088896341f + magic) - magic;
  vf r = t - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vset(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  memcpy(&scale, &e, sizeof scale);
  return p * scale;
}
