"""A small Triton kernel with one ``tl.dot``, exp and a store: the resource gate's SASS
counting must find matrix instructions in it for 16-bit and tf32 operands, FFMA for ieee."""

import triton
import triton.language as tl


@triton.jit
def dot_kernel(
    a_ptr, b_ptr, c_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr, PREC: tl.constexpr
):
    rm = tl.arange(0, M)
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * N + rn[None, :])
    c = tl.exp(tl.dot(a, b, input_precision=PREC))
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], c)
