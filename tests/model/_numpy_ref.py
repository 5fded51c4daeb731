"""An independent float64 NumPy implementation of docs/design.md#model-math with explicit loops.

Written from the design doc alone (not from atfnn_fast's code) so that the reference model is
checked against a second reading of the contract. Tiny sizes only: it is slow on purpose.
"""

from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def band_weights(src, weight, bias, axis):
    """src (B, Cin, F, T); weight (C, Cin, kf, kt) -> w (B, F, T), one loop per window."""
    b_, cin, f_, t_ = src.shape
    c = weight.shape[0]
    w = np.zeros((b_, f_, t_))
    if axis == "freq":
        g = weight.shape[2]
        for b in range(b_):
            for gi in range(f_ // g):
                for t in range(t_):
                    acts = [
                        sigmoid(
                            bias[ch]
                            + sum(
                                weight[ch, ci, k, 0] * src[b, ci, gi * g + k, t]
                                for ci in range(cin)
                                for k in range(g)
                            )
                        )
                        for ch in range(c)
                    ]
                    w[b, gi * g : (gi + 1) * g, t] = np.mean(acts)
    else:
        g = weight.shape[3]
        for b in range(b_):
            for f in range(f_):
                for gi in range(t_ // g):
                    acts = [
                        sigmoid(
                            bias[ch]
                            + sum(
                                weight[ch, ci, 0, k] * src[b, ci, f, gi * g + k]
                                for ci in range(cin)
                                for k in range(g)
                            )
                        )
                        for ch in range(c)
                    ]
                    w[b, f, gi * g : (gi + 1) * g] = np.mean(acts)
    return w


def layer_norm(z, weight, bias, eps):
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return (z - mu) / np.sqrt(var + eps) * weight + bias


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mha(z, in_w, in_b, out_w, out_b, heads):
    """nn.MultiheadAttention semantics on one sequence z (L, E)."""
    e = z.shape[1]
    d = e // heads
    q = z @ in_w[:e].T + in_b[:e]
    k = z @ in_w[e : 2 * e].T + in_b[e : 2 * e]
    v = z @ in_w[2 * e :].T + in_b[2 * e :]
    out = np.zeros_like(z)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        p = softmax(q[:, sl] @ k[:, sl].T / np.sqrt(d))
        out[:, sl] = p @ v[:, sl]
    return out @ out_w.T + out_b


def conv1d_same(z, weight, bias):
    """z (L, Cin) -> (L, Cout), zero padding k // 2, explicit loops."""
    length, cin = z.shape
    cout, _, k = weight.shape
    pad = k // 2
    out = np.zeros((length, cout))
    for pos in range(length):
        for o in range(cout):
            acc = bias[o]
            for j in range(k):
                src = pos + j - pad
                if 0 <= src < length:
                    acc += sum(weight[o, ci, j] * z[src, ci] for ci in range(cin))
            out[pos, o] = acc
    return out


def f_encoder(x1, p, heads, eps):
    """x1 (B, 1, F, T) -> (B, T, F, c); p: dict of numpy params named as the state_dict."""
    b_, _, f_, t_ = x1.shape
    c = p["lift.weight"].shape[0]
    out = np.zeros((b_, t_, f_, c))
    for b in range(b_):
        for t in range(t_):
            z = x1[b, 0, :, t][:, None] * p["lift.weight"][:, 0] + p["lift.bias"]
            a = mha(
                z,
                p["attn.in_proj_weight"],
                p["attn.in_proj_bias"],
                p["attn.out_proj.weight"],
                p["attn.out_proj.bias"],
                heads,
            )
            z = layer_norm(z + a, p["norm1.weight"], p["norm1.bias"], eps)
            h = np.maximum(conv1d_same(z, p["ffn1.weight"], p["ffn1.bias"]), 0.0)
            h = conv1d_same(h, p["ffn2.weight"], p["ffn2.bias"])
            out[b, t] = layer_norm(z + h, p["norm2.weight"], p["norm2.bias"], eps)
    return out


def lstm_direction(seq, w_ih, w_hh, b_ih, b_hh):
    """seq (T, D) -> hidden states (T, H); PyTorch gate order i, f, g, o."""
    hidden = w_hh.shape[1]
    h = np.zeros(hidden)
    cell = np.zeros(hidden)
    out = []
    for x in seq:
        gates = w_ih @ x + b_ih + w_hh @ h + b_hh
        i, f, g, o = np.split(gates, 4)
        cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(cell)
        out.append(h)
    return np.stack(out)


def bilstm_final(seq, p, layers):
    """Multi-layer Bi-LSTM on seq (T, D): concat(last layer fwd final, bwd final)."""
    for layer in range(layers):
        names = [f"{n}_l{layer}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        fwd = lstm_direction(seq, *(p[n] for n in names))
        bwd = lstm_direction(seq[::-1], *(p[n + "_reverse"] for n in names))[::-1]
        seq = np.concatenate([fwd, bwd], axis=1)
    return np.concatenate([fwd[-1], bwd[0]])


def sub(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def atfnn_forward(x, state, cfg):
    """Whole model in eval mode: x (B, 1, F, T) -> (logits, w_f, w_t, lstm_input)."""
    b_, _, f_, t_ = x.shape
    w_f = w_t = None
    x1 = x
    if cfg.f_attention:
        w_f = band_weights(
            x, state["f_attention.conv.weight"], state["f_attention.conv.bias"], "freq"
        )
        x1 = x + w_f[:, None] * x
    if cfg.f_encoder:
        enc = f_encoder(x1, sub(state, "f_encoder."), cfg.num_heads, cfg.layer_norm_eps)
    else:
        enc = x1[:, 0].transpose(0, 2, 1)[..., None]  # (B, T, F, 1)
    if cfg.t_attention:
        src = x if cfg.t_attention_source == "input" else enc.transpose(0, 3, 2, 1)
        w_t = band_weights(
            src, state["t_attention.conv.weight"], state["t_attention.conv.bias"], "time"
        )
        enc = enc + w_t.transpose(0, 2, 1)[..., None] * enc
    width = enc.shape[-1]
    seq = np.zeros((b_, t_, f_ * width))
    for f in range(f_):
        for ch in range(width):
            seq[:, :, f * width + ch] = enc[:, :, f, ch]
    if cfg.t_encoder:
        emb = np.stack(
            [bilstm_final(seq[b], sub(state, "t_encoder."), cfg.lstm_layers) for b in range(b_)]
        )
    else:
        emb = seq.mean(axis=1)
    logits = emb @ state["classifier.weight"].T + state["classifier.bias"]
    return logits, w_f, w_t, seq
