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

// 2^u for u <= 0 (a max-shifted softmax exponent in base 2): u = n + f with n an integer and
// |f| <= 1/2 (exact: no constant is rounded), a degree-7 polynomial for 2^f (the Taylor series
// of e^(f ln 2), truncation error 5e-9 relative at |f| = 1/2) and 2^n put into the exponent
// field: within 2 ulp of exp2f. u < -126 gives 2^-126 (about 1e-38; exp underflows there, and
// the softmax sums hold at least one 1); NaN stays NaN (every comparison with NaN is false,
// and the polynomial carries it). For u > 0 the result is 2^u up to u < 128 (only rounding
// makes a shifted exponent positive).
static inline vf vexp2(vf u) {
  u = u < -126.f ? vset(-126.f) : u;
  const vf magic = vset(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (u + magic) - magic;
  vf f = u - n;
  vf p = vset(1.525273380405984e-05f);
  p = p * f + 1.5403530393381608e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

#define LOG2E 1.44269504088896341f

// e^t for t <= 0 (see vexp2): e^t = 2^(t log2 e).
static inline vf vexp(vf t) { return vexp2(t * LOG2E); }
