"""benchmarks/floors.py: the counted work of every kernel and case, checked by hand and
against the launches ATFNN really makes (recorded on the CPU, nothing compiled)."""

import pytest
import torch

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.kernels import launch as launch_path
from atfnn_fast.kernels import use_backend
from benchmarks import floors

CFG = ATFNNConfig()


def test_ffn_forward_of_the_default_config_is_6_7_gflop():
    n, f = 128 * 128, 80
    ffn = floors.ffn_flops(CFG.channels, CFG.ffn_kernel, CFG.ffn_channels)
    assert ffn == 2 * (2 * 5 * 8 * 32)  # two convolutions, k c p multiply-adds each
    assert n * f * ffn == pytest.approx(6.71e9, rel=1e-3)
    # the tl.dot tiles pad 8 channels to 16: twice the work issued
    assert floors.padded_dot_flops(8, 5, 32) == 2 * ffn
    launch = floors.fenc_ffn(n, f, 8, 5, 32, 4, has_wt=False, grad=False)
    assert 6.7e9 < launch.flops < 6.9e9  # FFN + ReLU + LayerNorm2
    assert launch.exps == 0
    assert launch.bytes == n * f * (8 * 4 + 8 * 4)  # y1 read (fp32), output written


def test_softmax_exps_per_frame_match_the_design_doc():
    # 13 K exponentials per frame (docs/design.md#f-encoder-kernels): 80 bands x 80 x 2 heads
    one = floors.fenc_norm1(1, 80, 8, 2, 4)
    assert one.exps == 80 * 80 * 2 == 12800
    assert floors.fenc_bwd_softmax(1, 80, 2, 4).exps == 12800
    assert floors.fenc_bwd_norm1(1, 80, 8, 2, 4).exps == 12800


def test_band_forward_counted_by_hand():
    # F-Attention, one window: 8 conv outputs of 5 taps (+ bias), sigmoid, mean, 5 outputs
    c = floors.band_fwd(1, 8, 1, 5, 1, 4, target=False)
    assert c.flops == 8 * (2 * 5 + 1) + 2 * 8 + 8 + 1 + 2 * 5
    assert c.exps == 8
    assert c.bytes == (5 + 5 + 5) * 4  # read 5 source values; write 5 outputs, 5 map values


@pytest.mark.parametrize("case", ["freq_encoder_fwd", "front_end_fwd", "train_step"])
def test_counts_scale_with_batch_and_frames(case):
    base = floors.case_counts(CFG, case, 4, 32, 4)
    twice_b = floors.case_counts(CFG, case, 8, 32, 4)
    twice_t = floors.case_counts(CFG, case, 4, 64, 4)
    if case == "train_step":  # Adam and the LSTM weights do not grow with B or T
        assert base.flops < twice_b.flops < 2 * base.flops
        assert twice_b.flops == pytest.approx(twice_t.flops, rel=1e-4)  # the head: B only
    else:  # all but the parameter derive (a constant, a few hundred flops) scales
        assert twice_b == twice_t
        assert twice_b.flops == pytest.approx(2 * base.flops, rel=1e-5)
        assert (twice_b.exps, twice_b.bytes) == (2 * base.exps, 2 * base.bytes)


def test_bf16_halves_the_activation_bytes_only():
    fp32 = floors.case_counts(CFG, "freq_encoder_fwd", 4, 32, 4)
    bf16 = floors.case_counts(CFG, "freq_encoder_fwd", 4, 32, 2)
    assert (bf16.flops, bf16.exps) == (fp32.flops, fp32.exps)
    assert bf16.bytes * 2 == fp32.bytes


def test_floor_takes_the_tightest_resource():
    counts = floors.Counts(flops=10**12, exps=10**9, bytes=10**9)
    peaks = {"copy_gbps": 1000.0, "exp_per_s": 1e12}
    fl = floors.floor_ms(counts, peaks, tflops=10.0)
    assert fl["compute_ms"] == pytest.approx(100.0)
    assert fl["memory_ms"] == pytest.approx(1.0)
    assert fl["exp_ms"] == pytest.approx(1.0)
    assert (fl["floor_ms"], fl["bound"]) == (pytest.approx(100.0), "compute")
    # peaks not measured (CPU: no exp peak) leave their term out
    fl = floors.floor_ms(counts, {"copy_gbps": 1.0}, None)
    assert fl["bound"] == "memory" and fl["compute_ms"] is None and fl["exp_ms"] is None
    assert floors.compute_peak({"matmul_tflops_tf32": 3.0}, "float32", "tf32") == 3.0
    assert floors.compute_peak({"matmul_tflops_bf16": 7.0}, "bfloat16") == 7.0


def _recorded(cfg, blk: str, backward: bool) -> list[str]:
    from benchmarks.profile import kernel_name

    model = ATFNN(cfg, check_finite=False)
    x = torch.randn(2, 1, cfg.n_mels, 16, requires_grad=backward)
    enc = torch.randn(2, 16, cfg.n_mels, cfg.encoding_width, requires_grad=backward)
    labels = []

    def record(kernel, grid, args, kwargs):
        labels.append(floors.launch_label(kernel_name(kernel), kwargs))

    with launch_path.recording(record), use_backend("triton"):
        if blk == "freq_encoder":
            outs = [model._f_encoder(x)]
        elif blk == "band_attention":
            outs = [model._f_attention(x)[0], model._t_attention(x, enc)[0]]
        else:
            outs = [model.front_end(x)[0]]
        if backward:
            sum(o.float().sum() for o in outs).backward()
    return labels


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(
    ("config", "blk"),
    [
        ({}, "front_end"),
        ({}, "freq_encoder"),
        ({}, "band_attention"),
        ({"t_attention_source": "encoding"}, "front_end"),
    ],
)
def test_floors_know_every_launch_atfnn_makes(config, blk, backward):
    """The launches fused_launches counts are the ones the fused path makes (recorded, not
    run: the launch path hands them to a recorder)."""
    cfg = ATFNNConfig(frames=16, **config)
    want = [label for label, _ in floors.fused_launches(cfg, blk, 2, 16, 4, backward)]
    assert sorted(_recorded(cfg, blk, backward)) == sorted(want)


def test_launch_breakdown_rows_pair_times_with_floors():
    from benchmarks import profile

    cfg = ATFNNConfig()
    expected = floors.fused_launches(cfg, "front_end", 128, 128, 4, backward=True)
    step = [{"label": label, "ms": 1.0, "consts": {"num_warps": 4}} for label, _ in expected]
    slower = [{**r, "ms": 3.0} for r in step]
    peaks = {"copy_gbps": 3000.0, "matmul_tflops_fp32": 50.0, "exp_per_s": 4e12}
    rows = profile.rows_with_floors([step, slower, step], expected, peaks, "ieee")
    assert [r["label"] for r in rows] == [label for label, _ in expected]
    assert all(r["median_ms"] == 1.0 for r in rows)
    ffn = next(r for r in rows if r["label"] == "_fenc_ffn_kernel")
    assert ffn["bound"] == "compute"
    assert ffn["floor_ms"] == pytest.approx(ffn["flops"] / 50e12 * 1e3, rel=1e-3)
    softmax = next(r for r in rows if r["label"] == "_fenc_bwd_softmax_kernel")
    assert softmax["bound"] in ("compute", "exp")
    table = profile.launch_table(
        {
            "batch": 128,
            "frames": 128,
            "device": "GPU",
            "launches": rows,
            "total_ms": 12.0,
            "total_floor_ms": 1.2,
        }
    )
    assert "| total | | | 12.0000 | 1.2000 | | 10.0% |" in table
