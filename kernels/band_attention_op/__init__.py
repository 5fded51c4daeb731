"""Band attention (F-Attention and T-Attention) as one fused op, ``atfnn::band_attention``
(docs/design.md#band-attention). One module per role:

* :mod:`.op`: the public entry (the dispatch call);
* :mod:`.reference`: the plain-torch specification (the ground truth of the tests);
* :mod:`.cpu`: the op's CPU implementation, forward and backward;
* :mod:`.custom_op`: the ``torch.library`` registration, the autograd formula and the host
  code that launches the Triton kernels;
* :mod:`.forward`, :mod:`.backward`, :mod:`.common`: the Triton kernels.
"""

from .op import band_attention

__all__ = ["band_attention"]
