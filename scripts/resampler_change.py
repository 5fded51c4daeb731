"""How much the log-Mel features changed when the hand-written sinc resampler (before issue
18) was replaced by libsoxr (docs/design.md#features-and-data).

    PYTHONPATH=. python scripts/resampler_change.py

The bundled speech recording (22.05 kHz) is brought to each source rate with soxr's
``VHQ`` quality (the same input for both resamplers; 22.05 kHz is the file itself), then
resampled to 16 kHz by the old resampler (kept below, verbatim) and by
``atfnn_fast.features.resample`` (libsoxr ``HQ``), and the two log-Mel matrices are
compared on the bins within 60 dB of the loudest (below that the log magnifies rounding
noise of near-empty bands). Prints a Markdown table: max and mean absolute difference of
the log-Mel values (natural log of power), the same in units of the per-band standard
deviation (what the model sees after normalisation), the largest difference in the bands
centred below 85% of the lower of the two Nyquist frequencies (the two filters' transition
bands differ above), and the number of bins compared.
"""

from __future__ import annotations

import math

import numpy as np
import soundfile as sf
import soxr
import torch

from atfnn_fast.features import FeatureConfig, _mel_filters, log_mel, resample, speech_sample


def old_resample(wave: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """The resampler before issue 18: torchaudio's Hann-windowed sinc, 6 zero crossings,
    roll-off 0.99, with its kernel built from the reduced ratio of the rates."""
    if orig_freq == new_freq:
        return wave
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    zeros, rolloff = 6, 0.99
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=wave.dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=wave.dtype)[:, None, None] / new + idx
    t = (t * base).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * (window * (base / orig))
    shape = wave.shape
    flat = torch.nn.functional.pad(wave.reshape(-1, shape[-1]), (width, width + orig))
    out = torch.nn.functional.conv1d(flat[:, None], kernel, stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)[:, : math.ceil(new * shape[-1] / orig)]
    return out.reshape(*shape[:-1], out.shape[-1])


def main() -> None:
    data, native = sf.read(str(speech_sample()), dtype="float32")
    fb = _mel_filters(80, FeatureConfig())
    centres = (fb * torch.linspace(0, 8000, fb.shape[0])[:, None]).sum(0) / fb.sum(0)
    print(
        "| source rate | max abs diff | mean abs diff | max / band std | mean / band std "
        "| max below the edge | bins |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rate in (8000, 22050, 44100, 48000):
        x = data if rate == native else soxr.resample(data, native, rate, quality="VHQ")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        old, new = old_resample(x, rate, 16000), resample(x, rate, 16000)
        n = min(old.numel(), new.numel())
        a, b = log_mel(old[:n]), log_mel(new[:n])
        loud = (a > a.max() - 6 * math.log(10)) & (b > b.max() - 6 * math.log(10))
        diff = (a - b).abs()
        std = b.std(dim=1, keepdim=True).expand_as(b)
        below = loud & (centres < 0.85 * min(rate, 16000) / 2)[:, None]
        print(
            f"| {rate} | {diff[loud].max():.3f} | {diff[loud].mean():.4f} | "
            f"{(diff / std)[loud].max():.3f} | {(diff / std)[loud].mean():.4f} | "
            f"{diff[below].max():.3f} | {int(loud.sum()):,} of {loud.numel():,} |"
        )


if __name__ == "__main__":
    main()
