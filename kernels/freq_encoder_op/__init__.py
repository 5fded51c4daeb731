"""The F-Encoder (with the T-Attention multiply) as one fused op, ``atfnn::freq_encoder``
(docs/design.md#f-encoder-kernels). One module per role:

* :mod:`.op`: the public entry (the dispatch call);
* :mod:`.reference`: the plain-torch specification through ``scaled_dot_product_attention``
  (the ground truth of the tests);
* :mod:`.rank_one`: the same math in its rank-one form, in plain torch, forward and backward
  (what the kernels compute, and their emulation);
* :mod:`.cpu`: the op's CPU implementation, forward and backward;
* :mod:`.custom_op`: the ``torch.library`` registration, the autograd formula and the host
  code that launches the Triton kernels;
* :mod:`.forward`, :mod:`.backward`, :mod:`.common`, :mod:`.params`: the Triton kernels
  (forward passes, backward passes, the packed parameter buffer and shared per-band math,
  the parameter derivation and gradient reduction).
"""

from .op import freq_encoder

__all__ = ["freq_encoder"]
