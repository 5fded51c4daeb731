"""Dispatch never launches a kernel that cannot fit the device: checked against mocked
CUDA devices (no GPU needed)."""

import types
import warnings

import pytest
import torch

from atfnn_fast.kernels import dispatch, fit, use_backend


class CudaStub:
    """Stands in for a CUDA tensor: select() only asks for is_cuda and device."""

    is_cuda = True
    device = torch.device("cuda", 0)


def mock_device(monkeypatch, shared_kb, major=8, minor=6, name="Mock GeForce RTX 3090"):
    props = types.SimpleNamespace(
        major=major, minor=minor, name=name, shared_memory_per_block_optin=shared_kb * 1024
    )
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: props)
    fit.clear_cache()
    dispatch._warned.clear()


@pytest.fixture(autouse=True)
def _fresh_cache():
    fit.clear_cache()
    dispatch._warned.clear()
    yield
    fit.clear_cache()
    dispatch._warned.clear()


def triton_impl(*a, **k):
    return "triton"


def torch_impl(*a, **k):
    return "torch"


@pytest.mark.parametrize("op", ["band_attention", "freq_encoder"])
def test_99_kb_device_runs_the_kernels(monkeypatch, op):
    mock_device(monkeypatch, 99)
    assert fit.problem(op, torch.device("cuda", 0)) is None
    with use_backend("auto"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.select(op, CudaStub(), torch_impl, triton_impl) is triton_impl


def test_48_kb_device_falls_back_with_one_warning(monkeypatch):
    mock_device(monkeypatch, 48)
    need = fit.need_for("freq_encoder", 86)
    assert need > 48 * 1024  # the forward FFN kernel's 64-frame block
    with use_backend("auto"):
        with pytest.warns(
            RuntimeWarning,
            match=r"atfnn::freq_encoder: Mock GeForce RTX 3090 "
            r"\(sm_86\) has 48 KB of shared memory per block; its kernels need \d+ KB",
        ):
            assert (
                dispatch.select("freq_encoder", CudaStub(), torch_impl, triton_impl) is torch_impl
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per op and device
            assert (
                dispatch.select("freq_encoder", CudaStub(), torch_impl, triton_impl) is torch_impl
            )


def test_48_kb_device_is_an_error_under_the_triton_backend(monkeypatch):
    mock_device(monkeypatch, 48)
    with (
        use_backend("triton"),
        pytest.raises(
            RuntimeError,
            match=r"ATFNN_BACKEND=triton, but atfnn::freq_encoder cannot run here: "
            r"Mock GeForce RTX 3090 \(sm_86\) has 48 KB",
        ),
    ):
        dispatch.select("freq_encoder", CudaStub(), torch_impl, triton_impl)


def test_small_band_attention_blocks_fit_48_kb(monkeypatch):
    mock_device(monkeypatch, 48)
    assert fit.problem("band_attention", torch.device("cuda", 0)) is None


def test_gpu_older_than_sm80_takes_plain_torch(monkeypatch):
    mock_device(monkeypatch, 64, major=7, minor=5, name="Mock Tesla T4")
    msg = fit.problem("band_attention", torch.device("cuda", 0))
    assert (
        msg
        == "Mock Tesla T4 (sm_75) is older than sm_80, the lowest arch the kernels are built for"
    )


def test_newer_arch_is_held_to_the_largest_known_need(monkeypatch):
    assert fit.need_for("freq_encoder", 120) == max(fit.needs()["freq_encoder"].values())
    assert fit.need_for("freq_encoder", 87) == fit.needs()["freq_encoder"][86]


def test_unverified_ffn_kernel_size_falls_back_on_cuda(monkeypatch):
    mock_device(monkeypatch, 227, major=9, minor=0, name="Mock H100")
    from atfnn_fast.kernels.freq_encoder_op import custom_op as fe_custom

    reason = fe_custom.supports([8, 2, 3, 32], "cuda")
    assert "ffn_kernel 3" in reason
    assert fe_custom.supports([8, 2, 3, 32], "cpu") is None
    with use_backend("auto"), pytest.warns(RuntimeWarning, match="ffn_kernel 3"):
        assert (
            dispatch.select("freq_encoder", CudaStub(), torch_impl, triton_impl, reason)
            is torch_impl
        )
