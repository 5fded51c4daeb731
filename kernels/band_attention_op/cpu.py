"""Band attention on the CPU: the op's implementation for non-CUDA tensors, forward and
backward (float32 math, results in the input dtypes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference


def band_attention_cpu(source, weight, bias, target, time_axis):
    """The forward in plain torch: the op's implementation for non-CUDA tensors."""
    axis = "time" if time_axis else "freq"
    out, wmap = reference.band_attention(source, weight, bias, target, axis=axis)
    return out.contiguous(), wmap.contiguous()


def band_attention_backward_cpu(grad_out, grad_map, source, weight, bias, target, time_axis):
    """The backward formulas in plain torch (float32 math, results in the input dtypes)."""
    kf, kt = weight.shape[-2:]
    group = kt if time_axis else kf
    src, w32, b32 = source.float(), weight.float(), bias.float()
    a = torch.sigmoid(F.conv2d(src, w32, b32, stride=(kf, kt)))  # (B, C, n1, n2)
    wgt = a.mean(dim=1)
    if time_axis:
        w_full = wgt.repeat_interleave(group, dim=2)
    else:
        w_full = wgt.repeat_interleave(group, dim=1)
    if grad_out is None:  # the output was not used
        grad_out = torch.zeros_like(source if target is None else target)
    g = grad_out.float()
    if target is None:
        dtgt = g * (1 + w_full[:, None])
        dpos = (g * src).sum(dim=1)
    else:
        dtgt = g * (1 + w_full.transpose(1, 2)[..., None])
        dpos = (g * target.float()).sum(dim=-1).transpose(1, 2)
    if grad_map is not None:
        dpos = dpos + grad_map.float()
    b, f, t = dpos.shape
    if time_axis:
        dwin = dpos.reshape(b, f, t // group, group).sum(dim=3)
    else:
        dwin = dpos.reshape(b, f // group, group, t).sum(dim=2)
    dz = dwin[:, None] / a.shape[1] * a * (1 - a)
    dsrc = F.conv_transpose2d(dz, w32, stride=(kf, kt))
    dweight = torch.nn.grad.conv2d_weight(src, w32.shape, dz, stride=(kf, kt))
    dbias = dz.sum(dim=(0, 2, 3))
    if target is None:
        dsrc = dsrc + dtgt
        dtgt_out = torch.empty(0, dtype=source.dtype, device=source.device)
    else:
        dtgt_out = dtgt.to(target.dtype)
    return dsrc.to(source.dtype), dtgt_out, dweight.to(weight.dtype), dbias.to(bias.dtype)
