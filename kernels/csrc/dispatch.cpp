// Run-time ISA dispatch of the native CPU core (docs/design.md#native-cpu-core): one table of
// entry points per ISA, the best one the CPU (and the OS, for the AVX-512 state) supports
// picked by kernels/native.py, or the one ATFNN_NATIVE_ISA asks for. Compiled with the
// baseline flags only, so that this file runs on every CPU.
#include <stddef.h>

#include "simd.h"

extern "C" {
typedef int (*fenc_fwd_t)(const long*, float, const float*, const float*, const float*, float*,
                          float*, long, long);
typedef int (*fenc_bwd_t)(const long*, float, const float*, const float*, const float*,
                          const float*, const float*, float*, float*, float*, long, long);

int atfnn_fenc_forward_isa_generic(const long*, float, const float*, const float*, const float*,
                                   float*, float*, long, long);
int atfnn_fenc_backward_isa_generic(const long*, float, const float*, const float*, const float*,
                                    const float*, const float*, float*, float*, float*, long,
                                    long);
typedef int (*ba_fwd_t)(const long*, const float*, const float*, const float*, const float*,
                        float*, float*, float*, long, long);
typedef int (*ba_bwd_t)(const long*, const float*, const float*, const float*, const float*,
                        const float*, const float*, const float*, float*, float*, float*, float*,
                        long, long);
#define BA_DECL(isa)                                                                            \
  int atfnn_ba_forward_##isa(const long*, const float*, const float*, const float*,             \
                             const float*, float*, float*, float*, long, long);                 \
  int atfnn_ba_backward_##isa(const long*, const float*, const float*, const float*,            \
                              const float*, const float*, const float*, const float*, float*,   \
                              float*, float*, float*, long, long);
BA_DECL(isa_generic)
#if defined(ATFNN_HAVE_X86)
BA_DECL(isa_avx2)
BA_DECL(isa_avx512)
int atfnn_fenc_forward_isa_avx2(const long*, float, const float*, const float*, const float*,
                                float*, float*, long, long);
int atfnn_fenc_backward_isa_avx2(const long*, float, const float*, const float*, const float*,
                                 const float*, const float*, float*, float*, float*, long, long);
int atfnn_fenc_forward_isa_avx512(const long*, float, const float*, const float*, const float*,
                                  float*, float*, long, long);
int atfnn_fenc_backward_isa_avx512(const long*, float, const float*, const float*, const float*,
                                   const float*, const float*, float*, float*, float*, long,
                                   long);
#endif

// 0 generic, 1 AVX2 + FMA, 2 AVX-512 (F, DQ, BW, VL): 1 where this build has the path and the
// CPU runs it.
int atfnn_isa_supported(int isa) {
  if (isa == 0) return 1;
#if defined(ATFNN_HAVE_X86)
  __builtin_cpu_init();
  if (isa == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == 2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
  return 0;
}

// floats per vector of each path (the stats and partial-sum layouts do not depend on it)
int atfnn_isa_width(int isa) { return isa == 2 ? 16 : isa == 1 ? 8 : 4; }

static fenc_fwd_t fwd_table(int isa) {
#if defined(ATFNN_HAVE_X86)
  if (isa == 2) return atfnn_fenc_forward_isa_avx512;
  if (isa == 1) return atfnn_fenc_forward_isa_avx2;
#endif
  return isa == 0 ? atfnn_fenc_forward_isa_generic : NULL;
}
static fenc_bwd_t bwd_table(int isa) {
#if defined(ATFNN_HAVE_X86)
  if (isa == 2) return atfnn_fenc_backward_isa_avx512;
  if (isa == 1) return atfnn_fenc_backward_isa_avx2;
#endif
  return isa == 0 ? atfnn_fenc_backward_isa_generic : NULL;
}

static ba_fwd_t ba_fwd_table(int isa) {
#if defined(ATFNN_HAVE_X86)
  if (isa == 2) return atfnn_ba_forward_isa_avx512;
  if (isa == 1) return atfnn_ba_forward_isa_avx2;
#endif
  return isa == 0 ? atfnn_ba_forward_isa_generic : NULL;
}
static ba_bwd_t ba_bwd_table(int isa) {
#if defined(ATFNN_HAVE_X86)
  if (isa == 2) return atfnn_ba_backward_isa_avx512;
  if (isa == 1) return atfnn_ba_backward_isa_avx2;
#endif
  return isa == 0 ? atfnn_ba_backward_isa_generic : NULL;
}

// Return codes: 0 done, 1 ISA not available here, 2 out of memory.
int atfnn_fenc_forward(int isa, const long* dims, float eps, const float* x, const float* wt,
                       const float* prm, float* out, float* stats, long n0, long n1) {
  fenc_fwd_t fn = atfnn_isa_supported(isa) ? fwd_table(isa) : NULL;
  return fn ? fn(dims, eps, x, wt, prm, out, stats, n0, n1) : 1;
}
int atfnn_fenc_backward(int isa, const long* dims, float eps, const float* x, const float* wt,
                        const float* prm, const float* stats, const float* gout, float* dx,
                        float* dwt, float* dprm, long n0, long n1) {
  fenc_bwd_t fn = atfnn_isa_supported(isa) ? bwd_table(isa) : NULL;
  return fn ? fn(dims, eps, x, wt, prm, stats, gout, dx, dwt, dprm, n0, n1) : 1;
}

int atfnn_ba_forward(int isa, const long* dims, const float* src, const float* W,
                     const float* bias, const float* target, float* out, float* wmap, float* act,
                     long b0, long b1) {
  ba_fwd_t fn = atfnn_isa_supported(isa) ? ba_fwd_table(isa) : NULL;
  return fn ? fn(dims, src, W, bias, target, out, wmap, act, b0, b1) : 1;
}
int atfnn_ba_backward(int isa, const long* dims, const float* src, const float* W,
                      const float* bias, const float* target, const float* act, const float* gout,
                      const float* gmap, float* dsrc, float* dtarget, float* dW, float* dbias,
                      long b0, long b1) {
  ba_bwd_t fn = atfnn_isa_supported(isa) ? ba_bwd_table(isa) : NULL;
  return fn ? fn(dims, src, W, bias, target, act, gout, gmap, dsrc, dtarget, dW, dbias, b0, b1)
            : 1;
}

// what this library was built with: bit i set where ISA i was compiled in
int atfnn_isa_built(void) {
#if defined(ATFNN_HAVE_X86)
  return 7;
#else
  return 1;
#endif
}
}
