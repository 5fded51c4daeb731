"""Audio loading, log-Mel features, segmentation and normalisation
(docs/design.md#features-and-data).

Pipeline: :func:`load_audio` (soundfile; any rate, any channel count -> 16 kHz mono) ->
:func:`log_mel` ``(n_mels, N)`` -> :func:`segment` ``(S, n_mels, frames)`` ->
:meth:`NormStats.apply`. :func:`file_segments` runs all four for one file.

The same pipeline in bounded memory, for files of any length (prediction, and the feature
cache of training and evaluation): :func:`iter_audio` reads blocks of
``AUDIO_BLOCK_SECONDS`` and resamples them with one streaming libsoxr resampler (exactly
a whole-file :func:`resample`), :func:`iter_log_mel` turns them into log-Mel frames,
:func:`iter_segment_batches` cuts, normalises and groups the segments into batches. Memory
is set by the block and batch sizes, not by the file's length nor by the ratio of the
rates; the result equals the whole-file pipeline's (to float rounding of the STFT).

What a file may be (docs/design.md#features-and-data): a regular file (checked without
blocking), at a rate in :data:`AUDIO_RATE_RANGE`, no longer than
:data:`MAX_AUDIO_SECONDS`, not truncated (:func:`truncation_note`; the pad byte after an
odd-length data chunk is not truncation). Anything else is an :class:`AudioError` of one
line naming the file. Audio held in memory (an HTTP request's body, ``atfnn-fast serve``)
is read the same way as an :class:`AudioBytes` in place of a path, without touching the file
system, with its own length limit.

Choices where the paper is silent (docs/design.md#choices-the-paper-leaves-open):
* MelSpectrogram: power spectrum (power 2), ``center=True`` with reflect padding (frame i is
  centred on sample ``i*hop``, so N samples give ``1 + N // hop`` frames), HTK Mel scale
  without filter normalisation (torchaudio's defaults, written here in plain torch), 0 Hz to
  Nyquist.
* Multi-channel audio is mixed down by averaging the channels.
* Resampling: libsoxr (quality ``HQ``), in blocks; rates outside :data:`AUDIO_RATE_RANGE`
  and files longer than :data:`MAX_AUDIO_SECONDS` are refused.
* Padding: a tail shorter than a segment (and an utterance shorter than one segment) is
  padded with the silence value ``log(0 + log_offset)`` *before* normalisation, so padding
  looks like digital silence to the model.
* Normalisation: per Mel band mean and standard deviation over all frames of the training
  split (``NormStats.fit``); the standard deviation is floored at ``min_std`` so a constant
  band cannot divide by zero.
* Feature parameters read from files are bounded (:data:`FEATURE_LIMITS`) so an edited
  file cannot request a huge window; log-Mel values that are not finite (samples so large
  that the power overflows) are refused with an :class:`AudioError` naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Upper bounds of FeatureConfig's sizes (our choice): far above any speech front-end's needs.
FEATURE_LIMITS = {
    "sample_rate": 384_000,
    "n_fft": 16_384,
    "win_length": 16_384,
    "hop_length": 16_384,
}
AUDIO_BLOCK_SECONDS = 30.0  # our choice: audio read and resampled per step by iter_audio
# Sample rates an audio file may declare, and the target rates FeatureConfig takes (our
# choice: 4 kHz is below any speech corpus, 384 kHz the top of studio converters).
AUDIO_RATE_RANGE = (4_000, 384_000)
# Longest file read (our choice: 3 hours; a training utterance is seconds long, and the
# log-Mel of 3 hours is 1.08 M frames, 350 MB at 80 bands).
MAX_AUDIO_SECONDS = 3 * 3600
# Most samples (all channels) decoded at once: a block is AUDIO_BLOCK_SECONDS or fewer
# frames, so a many-channel or very high-rate file cannot make one block huge (16 MiB).
MAX_BLOCK_SAMPLES = 1 << 22
SOXR_QUALITY = "HQ"  # libsoxr's "high quality" preset (python-soxr's default)


class AudioError(ValueError):
    """An audio file that cannot be used; the message starts with the file's path."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class FeatureConfig:
    """STFT / Mel parameters (docs/design.md#features-and-data). ``n_mels`` and the segment
    length are model sizes and come from :class:`atfnn_fast.ATFNNConfig`."""

    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 320  # 20 ms Hamming window
    hop_length: int = 160  # 10 ms hop
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    log_offset: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"FeatureConfig.{name} must be a positive int, got {value!r}")
            if value > FEATURE_LIMITS[name]:
                raise ValueError(
                    f"FeatureConfig.{name} = {value} exceeds the limit of {FEATURE_LIMITS[name]}"
                )
        for name in ("f_min", "f_max", "log_offset"):
            value = getattr(self, name)
            if value is None and name == "f_max":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"FeatureConfig.{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"FeatureConfig.{name} must be finite, got {value}")
        low, high = AUDIO_RATE_RANGE
        if not low <= self.sample_rate <= high:
            raise ValueError(
                f"FeatureConfig.sample_rate must be in {low}..{high} Hz, got {self.sample_rate}"
            )
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ValueError(
                f"FeatureConfig: need 0 <= f_min < f_max <= sample_rate / 2 = {nyquist:g} Hz, "
                f"got f_min = {self.f_min}, f_max = {self.f_max}"
            )
        if self.win_length > self.n_fft:
            raise ValueError(
                f"FeatureConfig.win_length ({self.win_length}) must be <= n_fft ({self.n_fft})"
            )
        if not self.log_offset > 0:
            raise ValueError(f"FeatureConfig.log_offset must be positive, got {self.log_offset}")

    @property
    def silence_value(self) -> float:
        """Log-Mel value of digital silence, used to pad short segments."""
        return math.log(self.log_offset)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        if not isinstance(data, dict):
            raise TypeError(f"FeatureConfig: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"FeatureConfig: unknown fields {unknown}")
        return cls(**data)


# ------------------------------------------------------------------------------ audio
@dataclass(frozen=True, repr=False)
class AudioBytes:
    """An audio file's bytes held in memory, read wherever a path is (:func:`iter_audio`,
    :func:`iter_segment_batches`, the predictors' ``predict_file``) without touching the
    file system: ``name`` stands for the path in results and errors, and ``max_seconds``
    (default :data:`MAX_AUDIO_SECONDS`) bounds the length the header declares."""

    data: bytes
    name: str = "<bytes>"
    max_seconds: float | None = None

    suffix = ""  # no file name extension to report in a decode error

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"AudioBytes({self.name!r}, {len(self.data)} bytes)"


# A size libsndfile notes as "NAME : declared (should be actual)" in a file's extra_info.
_SIZE_NOTE = re.compile(r"^\s*([A-Za-z][\w ]*?)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_CONTAINERS = {"riff", "form", "riff size"}  # whole-file sizes, which count the pad byte
# Sizes that streaming writers put in a header they cannot seek back to fix: "unknown"
# (0xFFFFFFFF: ffmpeg to a pipe, RF64's placeholder) and sox's 0x7FFFF000. libsndfile then
# reads up to the end of the file, so nothing is missing.
STREAMING_SIZES = {0xFFFFFFFF, 0x7FFFF000}


def truncation_note(extra_info: str) -> str | None:
    """The size note of libsndfile's ``extra_info`` that shows a cut-off file, or None.

    libsndfile notes a header size that differs from what the file holds as
    ``data : 30003 (should be 14980)``. A chunk whose data has an odd byte count is
    followed by a pad byte (RIFF, AIFF); a writer that leaves it out makes the container's
    size one more than the file holds, and libsndfile also notes "'data' chunk should be
    an even number of bytes" for every odd data chunk, padded or not. Neither loses a
    sample, so neither counts; nor does a streaming writer's placeholder size
    (:data:`STREAMING_SIZES`, which makes the container's size a placeholder too: such a
    header never told the length, so there is nothing to compare); any other declared size
    above the actual one does."""
    notes = _SIZE_NOTE.findall(extra_info or "")
    if any(int(declared) in STREAMING_SIZES for _, declared, _ in notes):
        return None
    for name, declared, actual in notes:
        missing = int(declared) - int(actual)
        if missing > 1 or (missing == 1 and name.strip().lower() not in _CONTAINERS):
            return f"{name.strip()} : {declared} (should be {actual})"
    return None


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _open_audio(path: Path | AudioBytes):
    """An open ``soundfile.SoundFile`` after the checks every reader shares; errors name the
    file. Anything but a regular file (a FIFO would block, a device never end) is refused
    before it is opened, and the file is opened without blocking (``O_NONBLOCK``) and
    checked again, so a file swapped meanwhile cannot block either; soundfile gets the open file
    object, so any bytes in the name work. The declared rate must lie in
    :data:`AUDIO_RATE_RANGE` and the length within :data:`MAX_AUDIO_SECONDS`.
    :class:`AudioBytes` are decoded from memory, under their own ``max_seconds``."""

    def refuse(mode: int):
        kind = _file_kind(mode)
        return AudioError(path, f"is {kind}, not an audio file (a regular file is needed)")

    if isinstance(path, AudioBytes):
        import io

        return _open_handle(path, io.BytesIO(path.data), path.max_seconds)
    try:
        mode = os.stat(path).st_mode  # before opening: opening a device can have effects
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        # O_NONBLOCK: should a FIFO have taken the file's place since, opening cannot block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: audio file not found") from None
    except OSError as err:
        raise AudioError(path, f"cannot open ({err.strerror or err})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refuse(mode)
    return _open_handle(path, os.fdopen(fd, "rb"), None)


def _open_handle(path, fh, max_seconds: float | None):
    """The SoundFile of the open binary file object ``fh``, checked (:func:`_open_audio`)."""
    import soundfile as sf

    try:
        handle = sf.SoundFile(fh)
    except Exception as err:  # any decoder failure (OSError from reads too): one-line error
        fh.seek(0)
        head = fh.read(16)
        fh.close()
        raise AudioError(
            path, f"cannot decode audio ({_decode_problem(err, path, head)})"
        ) from None
    problem = truncation_note(handle.extra_info)
    if problem is not None:
        problem = f"truncated audio file (the header declares more data: {problem})"
    else:
        problem = _check_rate_and_length(handle.samplerate, handle.frames, max_seconds)
    if problem is not None:
        handle.close()
        fh.close()
        raise AudioError(path, problem)
    return _Opened(handle, fh)


# The file names a folder is searched for (predict, export --audio): what libsndfile decodes
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")

# The first bytes of formats a user may hand over, for a decode error's "what it saw".
_MAGIC = (
    (b"RIFF", 0, "a RIFF/WAV header"),
    (b"RIFX", 0, "a big-endian RIFF/WAV header"),
    (b"fLaC", 0, "a FLAC header"),
    (b"OggS", 0, "an Ogg container"),
    (b"FORM", 0, "an AIFF header"),
    (b"ID3", 0, "an MP3 with an ID3 tag"),
    (b"\xff\xfb", 0, "an MPEG audio frame (MP3)"),
    (b"ftyp", 4, "an MP4/M4A container (AAC: not readable by libsndfile; convert to WAV)"),
    (b"\x1aE\xdf\xa3", 0, "a Matroska/WebM container (not readable by libsndfile)"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"%PDF", 0, "a PDF document"),
    (b"\x89PNG", 0, "a PNG image"),
)


def _decode_problem(err: BaseException, path: Path, head: bytes) -> str:
    """libsndfile's reason without the file object's repr (``Error opening
    <_io.BufferedReader name=3>: ``), and the format the first bytes look like."""
    import re

    reason = re.sub(r"^Error opening <[^>]*>:\s*", "", str(err)).strip().rstrip(".")
    for magic, offset, what in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            seen = what
            break
    else:
        if not head:
            seen = "an empty file"
        elif all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            seen = f"text ({head.decode('ascii')[:12]!r}...)"
        else:
            seen = f"unknown bytes {head[:8].hex(' ')}"
    suffix = f", extension {path.suffix}" if path.suffix else ""
    return f"{reason}; the file starts with {seen}{suffix}"


def _check_rate_and_length(rate: int, frames: int, max_seconds: float | None = None) -> str | None:
    low, high = AUDIO_RATE_RANGE
    limit = MAX_AUDIO_SECONDS if max_seconds is None else max_seconds
    if not low <= rate <= high:
        return f"sample rate {rate} Hz is outside the supported {low}..{high} Hz"
    if frames / rate > limit:
        return (
            f"{frames / rate:,.0f} s of audio ({frames:,} samples at {rate} Hz) is longer than "
            f"the limit of {limit:,g} s"
        )
    return None


class _Opened:
    """A SoundFile and the file object under it, closed together."""

    def __init__(self, handle, fh) -> None:
        self.handle, self.fh = handle, fh

    def __enter__(self):
        return self.handle

    def __exit__(self, *exc) -> None:
        self.handle.close()
        self.fh.close()


def _read(path: Path, handle, count: int) -> np.ndarray:
    """``count`` frames from ``handle`` mixed down to float32 mono, checked."""
    import soundfile as sf

    try:
        data = handle.read(count, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(path, f"cannot decode audio ({err})") from None
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or Inf samples")
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32))


def load_audio(path: str | os.PathLike, sample_rate: int = 16_000) -> torch.Tensor:
    """Read an audio file with soundfile and return a float32 mono waveform ``(N,)`` at
    ``sample_rate``: the concatenation of :func:`iter_audio`'s blocks. Missing,
    unreadable, truncated, empty or non-finite audio, a file that is not a regular file,
    a rate outside :data:`AUDIO_RATE_RANGE` or a length beyond :data:`MAX_AUDIO_SECONDS`
    raises :class:`FileNotFoundError` or :class:`AudioError`, both naming the file."""
    return torch.cat(list(iter_audio(path, sample_rate)))


def _check_rates(orig_freq, new_freq) -> tuple[int, int]:
    low, high = AUDIO_RATE_RANGE
    rates = []
    for name, value in (("orig_freq", orig_freq), ("new_freq", new_freq)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"resample: {name} must be an int in {low}..{high} Hz, got {value!r}")
        rates.append(value)
    return rates[0], rates[1]


def resample(wave: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample ``wave (..., N)`` from ``orig_freq`` to ``new_freq`` Hz with libsoxr
    (python-soxr, quality ``HQ``): time and memory linear in N and independent of the
    ratio of the two rates (docs/design.md#features-and-data). Returns float32 with
    ``round(N * new_freq / orig_freq)`` samples along the last axis."""
    import soxr

    orig_freq, new_freq = _check_rates(orig_freq, new_freq)
    if orig_freq == new_freq:
        return wave
    shape = wave.shape
    flat = wave.detach().reshape(-1, shape[-1]).to("cpu", torch.float32).numpy()
    out = soxr.resample(np.ascontiguousarray(flat.T), orig_freq, new_freq, quality=SOXR_QUALITY)
    out = torch.from_numpy(np.ascontiguousarray(out.reshape(-1, flat.shape[0]).T))
    return out.reshape(*shape[:-1], out.shape[-1]).to(wave.device)


def iter_audio(
    path: str | os.PathLike,
    sample_rate: int = 16_000,
    block_seconds: float | None = None,
):
    """The file's float32 mono waveform at ``sample_rate``, as chunks read about
    ``block_seconds`` (default :data:`AUDIO_BLOCK_SECONDS`; at most
    :data:`MAX_BLOCK_SAMPLES` samples of all channels together) of audio at a time and
    resampled by one streaming libsoxr resampler (``soxr.ResampleStream``), so the
    concatenation equals a whole-file :func:`resample` exactly and memory is set by the
    block, not the file. Errors are :func:`load_audio`'s, raised when the bad block is
    reached."""
    path = path if isinstance(path, AudioBytes) else Path(path)
    with _open_audio(path) as handle:
        rate, total = handle.samplerate, handle.frames
        if total == 0:
            declared_zero = re.search(r"^data : 0$", handle.extra_info or "", re.M)
            size = len(path.data) if isinstance(path, AudioBytes) else os.stat(path).st_size
            if declared_zero and size > 64:
                raise AudioError(
                    path,
                    "empty audio: its header declares 0 bytes of data though the file is longer "
                    "(a streaming writer that never fixed its header); rewrite the file, e.g. "
                    "with sox or ffmpeg",
                )
            raise AudioError(path, "empty audio (0 samples)")
        stream = None
        if rate != sample_rate:
            import soxr

            _check_rates(rate, sample_rate)
            stream = soxr.ResampleStream(rate, sample_rate, 1, "float32", SOXR_QUALITY)
        block = int((block_seconds or AUDIO_BLOCK_SECONDS) * rate)
        block = max(1, min(block, MAX_BLOCK_SAMPLES // handle.channels))
        produced = 0
        for start in range(0, total, block):
            count = min(block, total - start)
            data = _read(path, handle, count)
            if data.shape[0] != count:
                raise AudioError(path, "truncated audio file (ends before its header says)")
            if stream is not None:
                data = stream.resample_chunk(data, last=start + count >= total)
            if data.shape[0]:
                produced += data.shape[0]
                yield torch.from_numpy(np.ascontiguousarray(data))
        if not produced:
            raise AudioError(
                path, f"too short: {total} sample(s) at {rate} Hz are 0 samples at {sample_rate} Hz"
            )


def audio_seconds(path: str | os.PathLike) -> float:
    """The length of an audio file in seconds, from its header (``frames / samplerate``),
    after the checks every reader makes (:func:`load_audio`'s errors); reads no samples.
    A timeline's last segment ends here."""
    with _open_audio(Path(path)) as handle:
        return handle.frames / handle.samplerate


# ---------------------------------------------------------------------------- log-Mel
@functools.lru_cache(maxsize=8)
def mel_centre_frequencies(n_mels: int, features: FeatureConfig | None = None) -> np.ndarray:
    """The centre frequency in Hz of each of the ``n_mels`` Mel bands (the peaks of the
    triangular filters of :func:`_mel_filters`, HTK scale); for plots."""
    features = features or FeatureConfig()
    f_max = features.f_max if features.f_max is not None else float(features.sample_rate // 2)
    low = 2595.0 * math.log10(1.0 + features.f_min / 700.0)
    high = 2595.0 * math.log10(1.0 + f_max / 700.0)
    mels = np.linspace(low, high, n_mels + 2)[1:-1]
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def _mel_filters(n_mels: int, features: FeatureConfig) -> torch.Tensor:
    """Triangular HTK-scale Mel filters without normalisation, ``(n_fft // 2 + 1, n_mels)``
    (the filter bank of ``torchaudio.functional.melscale_fbanks``, in plain torch)."""
    sr = features.sample_rate
    f_max = features.f_max if features.f_max is not None else float(sr // 2)
    all_freqs = torch.linspace(0, sr // 2, features.n_fft // 2 + 1)

    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    m_pts = torch.linspace(hz_to_mel(features.f_min), hz_to_mel(f_max), n_mels + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def _mel_power(
    wave: torch.Tensor, n_mels: int, features: FeatureConfig, center: bool = True
) -> torch.Tensor:
    """Power Mel spectrogram ``(..., n_mels, frames)``: frames with a periodic Hamming window,
    centred and reflect-padded with ``center`` (torchaudio's ``MelSpectrogram`` with these
    settings)."""
    shape = wave.shape
    spec = (
        torch.stft(
            wave.reshape(-1, shape[-1]),
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            win_length=features.win_length,
            window=torch.hamming_window(features.win_length, device=wave.device),
            center=center,
            pad_mode="reflect",
            onesided=True,
            return_complex=True,
        ).abs()
        ** 2
    )
    fb = _mel_filters(n_mels, features).to(wave.device)
    mel = torch.matmul(spec.transpose(-1, -2), fb).transpose(-1, -2)
    return mel.reshape(*shape[:-1], *mel.shape[-2:])


def log_mel(
    wave: torch.Tensor, n_mels: int = 80, features: FeatureConfig | None = None
) -> torch.Tensor:
    """``wave (..., N)`` at ``features.sample_rate`` -> ``log(mel + log_offset)``
    ``(..., n_mels, 1 + N // hop_length)``, float32."""
    features = features or FeatureConfig()
    if not isinstance(wave, torch.Tensor) or not wave.is_floating_point():
        raise TypeError(f"wave must be a floating-point torch.Tensor, got {type(wave).__name__}")
    if wave.shape[-1] <= features.n_fft // 2:
        raise ValueError(
            f"wave must have more than n_fft // 2 = {features.n_fft // 2} samples "
            f"({features.n_fft // 2 / features.sample_rate * 1000:.0f} ms), "
            f"got {wave.shape[-1]}"
        )
    mel = _mel_power(wave.float(), n_mels, features)
    return torch.log(mel + features.log_offset)


def iter_log_mel(
    chunks: Iterable[torch.Tensor], n_mels: int = 80, features: FeatureConfig | None = None
):
    """:func:`log_mel` of the concatenation of ``chunks`` (1-D waveform pieces), as
    ``(n_mels, k)`` blocks of consecutive frames: the reflect padding of ``center=True`` is
    applied at the two ends of the stream and the frames in between are computed with
    ``center=False`` on a buffer that never holds much more than one chunk."""
    features = features or FeatureConfig()
    n_fft, hop = features.n_fft, features.hop_length
    pad = n_fft // 2
    mel = functools.partial(_mel_power, n_mels=n_mels, features=features, center=False)
    empty = torch.zeros(0)
    head = empty  # samples held back until the start can be reflected (needs pad + 1)
    tail = empty  # the last pad + 1 samples, for the reflection at the end
    buf, pos, frame = empty, 0, 0  # buffer of the padded stream, its start, the next frame
    total = 0

    def frames_from(samples: torch.Tensor):
        nonlocal buf, pos, frame
        buf = torch.cat([buf, samples])
        skip = min(max(0, frame * hop - pos), buf.numel())  # a hop longer than the window
        buf, pos = buf[skip:], pos + skip
        end = pos + buf.numel()  # frames whose whole window [j*hop, j*hop + n_fft) is here
        if end < frame * hop + n_fft:
            return None
        count = 1 + (end - n_fft - frame * hop) // hop
        start = frame * hop - pos
        out = mel(buf[start : start + (count - 1) * hop + n_fft])
        frame += count
        drop = min(frame * hop - pos, buf.numel())
        buf, pos = buf[drop:], pos + drop
        return torch.log(out + features.log_offset)

    for chunk in chunks:
        chunk = chunk.float()
        total += chunk.numel()
        tail = torch.cat([tail, chunk])[-(pad + 1) :]
        if head is not None:
            head = torch.cat([head, chunk])
            if head.numel() <= pad:
                continue
            chunk, head = torch.cat([head[1 : pad + 1].flip(0), head]), None
        out = frames_from(chunk)
        if out is not None:
            yield out
    if total <= pad:
        raise ValueError(
            f"wave must have more than n_fft // 2 = {pad} samples "
            f"({pad / features.sample_rate * 1000:.0f} ms), got {total}"
        )
    out = frames_from(tail[:-1].flip(0)[:pad])
    if out is not None:
        yield out


# ------------------------------------------------------------------------ segmentation
# The nearly-empty last segment (docs/design.md#choices-the-paper-leaves-open): when an
# utterance is scored (predict, evaluate, validation), a padded last segment holding fewer
# than this share of real frames is dropped, unless it is the only segment.
TAIL_FRACTION = 0.25


def min_tail_frames(frames: int) -> int:
    """Real frames a padded last scoring segment needs to count: ``TAIL_FRACTION`` of a
    segment, rounded up (32 of 128)."""
    return math.ceil(TAIL_FRACTION * frames)


def segment(
    logmel: torch.Tensor,
    frames: int = 128,
    hop: int | None = None,
    pad_value: float | None = None,
    min_tail: int = 0,
) -> torch.Tensor:
    """Cut ``(F, N)`` into ``(S, F, frames)`` windows starting every ``hop`` frames
    (default: ``frames``, no overlap). Every frame is covered: the last window may run past
    the end and is padded with ``pad_value`` (default: the silence value of the default
    :class:`FeatureConfig`), as is an utterance shorter than one window. A last window with
    fewer than ``min_tail`` real frames is dropped when there are others (scoring passes
    :func:`min_tail_frames`; training keeps every window)."""
    if logmel.dim() != 2:
        raise ValueError(f"logmel must be (F, N), got shape {tuple(logmel.shape)}")
    hop = frames if hop is None else hop
    if frames <= 0 or not 0 < hop <= frames:
        raise ValueError(
            f"segment: need frames > 0 and 0 < hop <= frames (no gaps), "
            f"got frames={frames}, hop={hop}"
        )
    n = logmel.shape[1]
    if n == 0:
        raise ValueError("logmel has no frames (N = 0)")
    pad_value = FeatureConfig().silence_value if pad_value is None else pad_value
    count = 1 + max(0, math.ceil((n - frames) / hop))
    if count > 1 and n - (count - 1) * hop < min_tail:
        count -= 1
    total = (count - 1) * hop + frames
    padded = torch.nn.functional.pad(logmel, (0, max(0, total - n)), value=pad_value)
    return padded[:, :total].unfold(1, frames, hop).permute(1, 0, 2).contiguous()


# ------------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class NormStats:
    """Per Mel band mean and standard deviation of the training split's log-Mel frames."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(
                f"NormStats: mean and std must be non-empty and of equal length, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        values = np.asarray(self.mean + self.std, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("NormStats: mean and std must be finite")
        if min(self.std) <= 0:
            raise ValueError(f"NormStats: std must be positive, got min {min(self.std)}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count <= 0:
            raise ValueError(f"NormStats: count must be a positive int, got {self.count!r}")

    @property
    def n_mels(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, logmels: Iterable[torch.Tensor], min_std: float = 1e-5) -> NormStats:
        """Statistics over all frames of ``(F, N)`` log-Mel matrices (pooled exactly, in
        float64, by merging per-utterance means and sums of squared deviations)."""
        total = 0
        mean = m2 = None
        for i, lm in enumerate(logmels):
            a = torch.as_tensor(lm, dtype=torch.float64)
            if a.dim() != 2 or a.shape[1] == 0:
                raise ValueError(f"NormStats.fit: item {i} must be (F, N>0), got {tuple(a.shape)}")
            n = a.shape[1]
            mu = a.mean(dim=1)
            dev = ((a - mu[:, None]) ** 2).sum(dim=1)
            if mean is None:
                mean, m2, total = mu, dev, n
                continue
            if a.shape[0] != mean.shape[0]:
                raise ValueError(
                    f"NormStats.fit: item {i} has {a.shape[0]} bands, expected {mean.shape[0]}"
                )
            delta = mu - mean
            new_total = total + n
            mean = mean + delta * (n / new_total)
            m2 = m2 + dev + delta**2 * (total * n / new_total)
            total = new_total
        if mean is None:
            raise ValueError("NormStats.fit: no log-Mel matrices given")
        std = torch.sqrt(m2 / total).clamp_min(min_std)
        return cls(tuple(mean.tolist()), tuple(std.tolist()), int(total))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(..., F, T)``: ``(x - mean) / std`` per band."""
        if x.dim() < 2 or x.shape[-2] != self.n_mels:
            raise ValueError(
                f"NormStats.apply: expected (..., {self.n_mels}, T), got {tuple(x.shape)}"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None]
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        if not isinstance(data, dict) or set(data) != {"mean", "std", "count"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"NormStats: expected keys ['count', 'mean', 'std'], got {got}")
        return cls(_numbers(data, "mean"), _numbers(data, "std"), data["count"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        return cls.from_dict(json.loads(text))


def _numbers(data: dict[str, Any], key: str) -> tuple[float, ...]:
    """``data[key]`` as floats: a list of JSON numbers, nothing else (a string such as
    ``"0123456789"`` or ``["1.5"]`` would otherwise convert, and change every score)."""
    values = data[key]
    if not isinstance(values, list | tuple):
        raise ValueError(f"NormStats: {key} must be a list of numbers, got {type(values).__name__}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"NormStats: {key}[{i}] must be a number, got {type(value).__name__} "
                f"{str(value)[:40]!r}"
            )
    try:
        return tuple(float(v) for v in values)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"NormStats: {key} holds a number too large for a float") from None


# ------------------------------------------------------------------------------ all four
def file_segments(
    path: str | os.PathLike,
    *,
    n_mels: int = 80,
    frames: int = 128,
    hop: int | None = None,
    stats: NormStats | None = None,
    features: FeatureConfig | None = None,
) -> torch.Tensor:
    """Model input for one file: ``(S, 1, n_mels, frames)``, normalised if ``stats``. With
    ``hop`` None (scoring segments) a nearly-empty last segment is dropped
    (:func:`min_tail_frames`)."""
    features = features or FeatureConfig()
    wave = load_audio(path, features.sample_rate)
    try:
        lm = log_mel(wave, n_mels, features)
    except ValueError as err:
        raise AudioError(path, str(err)) from None
    tail = min_tail_frames(frames) if hop in (None, frames) else 0
    segs = segment(lm, frames, hop, features.silence_value, min_tail=tail)
    if stats is not None:
        segs = stats.apply(segs)
    return segs.unsqueeze(1)


def iter_segment_batches(
    path: str | os.PathLike,
    *,
    n_mels: int = 80,
    frames: int = 128,
    stats: NormStats | None = None,
    features: FeatureConfig | None = None,
    batch_size: int = 64,
):
    """:func:`file_segments` (non-overlapping segments, a nearly-empty last one dropped) in
    bounded memory: yields
    ``(b, 1, n_mels, frames)`` batches of at most ``batch_size`` segments, in order, whose
    concatenation equals ``file_segments(path, ...)`` up to float rounding (the stream
    projects blocks of frames onto the Mel filters, and the BLAS may round a block of one
    frame unlike the whole file's). Errors name the file."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    features = features or FeatureConfig()
    pad_value = features.silence_value
    pending: list[torch.Tensor] = []  # log-Mel blocks not yet cut into segments
    ready: list[torch.Tensor] = []  # cut segments not yet yielded
    n_pending = n_ready = cut = 0

    def batches(final: bool):
        nonlocal ready, n_ready
        while n_ready >= batch_size or (final and n_ready):
            segs = torch.cat(ready)
            out, rest = segs[:batch_size], segs[batch_size:]
            ready, n_ready = ([rest] if rest.shape[0] else []), rest.shape[0]
            if stats is not None:
                out = stats.apply(out)
            yield out.unsqueeze(1)

    try:
        for lm in iter_log_mel(iter_audio(path, features.sample_rate), n_mels, features):
            if not bool(torch.isfinite(lm).all()):
                raise AudioError(path, "log-Mel features are not finite (samples too large?)")
            pending.append(lm)
            n_pending += lm.shape[1]
            if n_pending >= frames:
                block = torch.cat(pending, dim=1)
                whole = n_pending // frames * frames
                segs = block[:, :whole].reshape(n_mels, -1, frames).permute(1, 0, 2)
                ready.append(segs.contiguous())
                n_ready += segs.shape[0]
                cut += segs.shape[0]
                pending, n_pending = [block[:, whole:]], n_pending - whole
                yield from batches(final=False)
        if n_pending and (n_pending >= min_tail_frames(frames) or not cut):
            # the tail, padded with silence like segment() does; dropped when nearly empty
            block = torch.cat(pending, dim=1)
            block = torch.nn.functional.pad(block, (0, frames - n_pending), value=pad_value)
            ready.append(block[None])
            n_ready += 1
        yield from batches(final=True)
    except AudioError:
        raise
    except ValueError as err:  # too short for one frame
        raise AudioError(path, str(err)) from None


def speech_sample() -> Path:
    """Path of the bundled speech recording (a few seconds of read speech, 16 kHz)."""
    from importlib import resources

    return Path(str(resources.files("atfnn_fast") / "assets" / "speech.wav"))
