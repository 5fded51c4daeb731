"""Bad input at the public boundary: a clear TypeError / ValueError, never a wrong result."""

import pytest
import torch
from helpers import tiny_config

from atfnn_fast import ATFNN, ATFNNReference


@pytest.fixture(params=[ATFNN, ATFNNReference])
def model(request):
    return request.param(tiny_config()).eval()  # n_mels 10, t_group 8


@pytest.mark.parametrize(
    "x,error,pattern",
    [
        ([[1.0]], TypeError, r"x must be a torch.Tensor .* got list"),
        (
            torch.randn(10, 16),
            ValueError,
            r"x must have 4 dims .* got 2 dims with shape \(10, 16\)",
        ),
        (torch.randn(1, 1, 1, 10, 16), ValueError, r"got 5 dims"),
        (torch.randn(2, 3, 10, 16), ValueError, r"1 channel at dim 1 .* got 3"),
        (torch.randn(2, 1, 12, 16), ValueError, r"F = n_mels = 10 .* got 12"),
        (torch.randn(2, 12, 16), ValueError, r"F = n_mels = 10 .* got 12"),
        (torch.randn(2, 1, 10, 20), ValueError, r"multiple of t_group = 8, got 20"),
        (torch.randn(2, 1, 10, 0), ValueError, r"multiple of t_group = 8, got 0"),
        (
            torch.zeros(2, 1, 10, 16, dtype=torch.int64),
            TypeError,
            r"floating-point .* got torch.int64",
        ),
        (torch.zeros(2, 1, 10, 16, dtype=torch.bool), TypeError, r"got torch.bool"),
        (torch.zeros(2, 1, 10, 16, dtype=torch.complex64), TypeError, r"got torch.complex64"),
        (torch.randn(0, 1, 10, 16), ValueError, r"empty batch: expected B >= 1"),
    ],
)
def test_bad_input_is_refused(model, x, error, pattern):
    with pytest.raises(error, match=pattern):
        model(x)


@pytest.mark.parametrize(
    "bad,counts", [(float("nan"), "1 NaN and 0 Inf"), (float("inf"), "0 NaN and 1 Inf")]
)
def test_non_finite_values_are_refused(model, bad, counts):
    x = torch.randn(2, 1, 10, 16)
    x[1, 0, 3, 5] = bad
    with pytest.raises(ValueError, match=f"x must be finite: got {counts} values"):
        model(x)


def test_finite_check_can_be_turned_off():
    model = ATFNN(tiny_config(), check_finite=False).eval()
    x = torch.randn(2, 1, 10, 16)
    x[0, 0, 0, 0] = float("nan")
    assert torch.isnan(model(x)).any()


def test_device_mismatch_is_refused(model):
    model.to("meta")
    with pytest.raises(ValueError, match="x is on cpu but the model is on meta"):
        model(torch.randn(2, 1, 10, 16))


def test_config_and_keyword_overrides():
    with pytest.raises(TypeError, match="config must be an ATFNNConfig"):
        ATFNN({"num_classes": 3})
    assert ATFNN(tiny_config(), num_classes=7).config.num_classes == 7
    with pytest.raises(ValueError, match="multiple of num_heads"):
        ATFNN(tiny_config(), num_heads=3)
