import os

import torch

# Without a GPU the Triton kernels run through the interpreter. TRITON_INTERPRET must be set
# before atfnn_fast (and so its kernels) is imported; with a GPU they compile for real.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from atfnn_fast import ATFNNConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Small sizes that keep every divisibility rule of the contract but run in milliseconds.
TINY = dict(
    num_classes=3, n_mels=10, frames=16, channels=4, f_group=5, t_group=8, num_heads=2,
    ffn_channels=6, ffn_kernel=5, lstm_hidden=5, lstm_layers=2, dropout=0.0,
)  # fmt: skip

VARIANTS = {
    "ATFNN": {},
    "TFNN": dict(f_attention=False, t_attention=False),
    "ATNN": dict(f_encoder=False),
    "AFNN": dict(t_encoder=False),
}


def tiny_config(**changes) -> ATFNNConfig:
    return ATFNNConfig(**{**TINY, **changes})


@pytest.fixture(autouse=True)
def _seed_and_backend():
    """Fresh random inputs per test, but reproducible on failure; default backend."""
    from atfnn_fast import kernels

    seed = int.from_bytes(os.urandom(4), "little")
    print(f"torch seed {seed}")  # shown with a failure's captured output
    torch.manual_seed(seed)
    with kernels.use_backend("auto"):
        yield


def randomize(model: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Replace every parameter by fresh random values (LayerNorm affine included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the relative error the kernel tests bound."""
    scale = want.detach().abs().max().clamp_min(1e-30)
    return ((got.detach().float() - want.detach().float()).abs().max() / scale).item()
