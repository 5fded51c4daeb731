"""A deliberately oversized Triton kernel: a 256 x 128 x 256 float32 tl.dot per program, whose
operand tiles alone need 256 KB of shared memory. The resource check must call it short."""

import triton
import triton.language as tl


@triton.jit
def oversized_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    rm = tl.arange(0, M)
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], tl.dot(a, b))
