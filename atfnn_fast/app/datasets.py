"""Datasets: manifests built from published corpora, and cached log-Mel features
(docs/design.md#features-and-data). The manifest format itself is
:mod:`atfnn_fast.manifest`.

:func:`prepare` builds a manifest from a corpus's published layout:

* ``iemocap``: ``Session{1-5}/sentences/wav/<dialog>/<utterance>.wav`` with labels from
  ``Session{n}/dialog/EmoEvaluation/<dialog>.txt``; improvised dialogs only and the classes
  angry, happy, sad, neutral, as in the paper (``merge_excited=True`` adds "exc" as happy);
  the speaker is session + the utterance speaker's gender (``Ses01F``...), the session is
  recorded for leave-one-session-out;
* ``casia``: ``<speaker>/<emotion>/<name>.wav`` (6 emotions);
* ``emodb``: ``wav/<sp><text><emotion letter><version>.wav`` (e.g. ``03a01Fa.wav``);
* ``ravdess``: ``Actor_XX/03-01-<emotion>-<intensity>-<statement>-<repetition>-<actor>.wav``
  (speech, audio-only files; 8 emotions);
* ``cremad``: ``AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav`` (6 emotions).

:class:`FeatureCache` computes each file's log-Mel matrix once (with a progress bar) and
keeps it in ``<cache>/<sha1 of the path, size and mtime>.pt`` files, written atomically
(modes from the umask); :func:`cache_folder` says where the cache is. The
audio is read, resampled and turned into log-Mel frames in blocks, as ``predict`` does
(:func:`atfnn_fast.features.iter_log_mel` of :func:`~atfnn_fast.features.iter_audio`). An
entry read back is checked (a float32 ``(n_mels, N > 0)`` matrix of finite values); a
damaged one is rebuilt with a :class:`CacheWarning` naming it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from pathlib import Path

import torch

from atfnn_fast.app.progress import progress
from atfnn_fast.errors import UsageError
from atfnn_fast.features import AudioError, FeatureConfig, iter_audio, iter_log_mel
from atfnn_fast.files import check_input, check_output, write_atomic
from atfnn_fast.manifest import Item, ManifestError, write_manifest
from atfnn_fast.walk import find_files, warn_skipped

# Part of every cache key: entries computed by an older feature pipeline are not reused
# ("soxr-HQ": the libsoxr resampler of issue 18, whose features differ from the old one's).
CACHE_VERSION = "soxr-HQ"
DATASETS = ("iemocap", "casia", "emodb", "ravdess", "cremad")
AUDIO_EXTENSIONS = (".wav", ".flac")


# ------------------------------------------------------------------------ corpus readers
class CorpusWarning(UserWarning):
    """A file or folder of a corpus that ``datasets prepare`` skipped (unreadable, a symlink
    loop, not a regular file)."""


def _readable(path: Path) -> bool:
    """Whether ``path`` opens as a regular file; if not, a :class:`CorpusWarning` names it
    and says why (permission denied, a symlink loop, a FIFO...)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        why = err.strerror
    else:
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        if stat.S_ISREG(mode):
            return True
        why = "not a regular file"
    warnings.warn(f"{path}: skipped ({why})", CorpusWarning, stacklevel=3)
    return False


def _audio_files(root: Path):
    """The corpus's audio files: all levels, symbolic links to folders followed, each folder
    once (:func:`atfnn_fast.walk.find_files`); a folder not walked and a file that cannot
    be read are warnings (:class:`CorpusWarning`) naming them."""
    found, skipped = find_files(root, AUDIO_EXTENSIONS)
    warn_skipped(skipped, CorpusWarning)
    return [p for p in found if _readable(p)]


IEMOCAP_CLASSES = {"ang": "angry", "hap": "happy", "sad": "sad", "neu": "neutral"}
_IEMOCAP_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t")


def _iemocap(root: Path, merge_excited: bool) -> list[Item]:
    classes = dict(IEMOCAP_CLASSES, **({"exc": "happy"} if merge_excited else {}))
    labels = {}
    for evaluation in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        for line in evaluation.read_text(errors="replace").splitlines():
            match = _IEMOCAP_LINE.match(line)
            if match:
                labels[match.group(1)] = match.group(2)
    items = []
    for wav in sorted(root.glob("Session*/sentences/wav/*/*.wav")):
        if not _readable(wav):
            continue
        utt = wav.stem  # Ses01F_impro01_F000
        dialog = wav.parent.name
        if "impro" not in dialog or labels.get(utt) not in classes:
            continue
        session = "Session" + str(int(utt[3:5]))
        speaker = utt[:5] + utt.split("_")[-1][0]  # Ses01 + gender of this utterance
        items.append(Item(wav.resolve(), classes[labels[utt]], speaker, session))
    return items


CASIA_EMOTIONS = ("angry", "fear", "happy", "neutral", "sad", "surprise")


def _casia(root: Path) -> list[Item]:
    items = []
    for wav in _audio_files(root):
        emotion, speaker = wav.parent.name.lower(), wav.parent.parent.name
        if emotion in CASIA_EMOTIONS:
            items.append(Item(wav.resolve(), emotion, speaker))
    return items


EMODB_EMOTIONS = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
_EMODB_NAME = re.compile(r"^(\d\d)[a-z]\d\d([WLEAFTN])[a-z]$")


def _emodb(root: Path) -> list[Item]:
    items = []
    for wav in _audio_files(root):
        match = _EMODB_NAME.match(wav.stem)
        if match:
            items.append(Item(wav.resolve(), EMODB_EMOTIONS[match.group(2)], match.group(1)))
    return items


RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}


def _ravdess(root: Path) -> list[Item]:
    items = []
    for wav in _audio_files(root):
        parts = wav.stem.split("-")
        # modality 03 = audio-only, vocal channel 01 = speech (02 is song)
        if (
            len(parts) == 7
            and parts[0] == "03"
            and parts[1] == "01"
            and parts[2] in RAVDESS_EMOTIONS
        ):
            items.append(Item(wav.resolve(), RAVDESS_EMOTIONS[parts[2]], f"Actor_{parts[6]}"))
    return items


CREMAD_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}


def _cremad(root: Path) -> list[Item]:
    items = []
    for wav in _audio_files(root):
        parts = wav.stem.split("_")
        if len(parts) == 4 and parts[2] in CREMAD_EMOTIONS and parts[0].isdigit():
            items.append(Item(wav.resolve(), CREMAD_EMOTIONS[parts[2]], parts[0]))
    return items


def prepare(
    dataset: str, root: str | os.PathLike, out: str | os.PathLike, *, merge_excited: bool = False
) -> tuple[Path, list[Item]]:
    """Build the manifest of a corpus found at ``root``; returns (manifest path, items)."""
    root = Path(root)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    check_input(root, "corpus folder", folder=True)
    check_output(out, option="--out")  # before the corpus is walked
    if Path(out).suffix.lower() in AUDIO_EXTENSIONS:  # it would replace a file of the corpus
        raise UsageError(f"--out {out}: names an audio file; the manifest is a CSV file")
    readers = {
        "iemocap": lambda r: _iemocap(r, merge_excited),
        "casia": _casia,
        "emodb": _emodb,
        "ravdess": _ravdess,
        "cremad": _cremad,
    }
    items = readers[dataset](root)
    if not items:
        raise ManifestError(f"{root}: no {dataset} utterances found (is this the corpus root?)")
    return write_manifest(items, out), items


# ----------------------------------------------------------------------- feature cache
class CacheWarning(UserWarning):
    """A damaged feature-cache entry, deleted and rebuilt; or a manifest folder that cannot
    hold the cache (the user cache is used instead)."""


CACHE_DIR = ".atfnn-cache"


def user_cache() -> Path:
    """``$XDG_CACHE_HOME/atfnn-fast/features`` (default ``~/.cache/atfnn-fast/features``);
    a relative ``XDG_CACHE_HOME`` is ignored, as the XDG Base Directory specification
    says (it would name a different folder in every working directory)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "atfnn-fast", "features")


def cache_folder(manifest: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Where the feature cache of ``manifest`` lives: ``cache`` (``--cache``) when given;
    else ``.atfnn-cache`` next to the manifest, unless nothing can be written there (a
    corpus on a read-only mount, a folder of another user): then :func:`user_cache`, with a
    :class:`CacheWarning` naming both. Entries are keyed by the audio file's resolved path,
    size and mtime and the feature parameters, so one cache can serve many corpora."""
    if cache is not None:
        return check_output(cache, option="--cache", directory=True)
    beside = Path(manifest).resolve().parent / CACHE_DIR
    try:
        return check_output(beside, option="--cache", directory=True)
    except OSError as err:
        fallback = user_cache()
        warnings.warn(
            f"{beside}: cannot hold the feature cache ({err.strerror}); using {fallback} "
            "(choose another with --cache)",
            CacheWarning,
            stacklevel=2,
        )
        return check_output(fallback, option="--cache", directory=True)


class FeatureCache:
    """Log-Mel matrices ``(n_mels, N)`` per file, computed once and cached on disk."""

    def __init__(
        self, folder: str | os.PathLike, n_mels: int = 80, features: FeatureConfig | None = None
    ) -> None:
        self.folder = Path(folder)
        self.n_mels = n_mels
        self.features = features or FeatureConfig()
        self.folder.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> Path:
        stat = path.stat()
        text = (
            f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.n_mels}|{self.features}"
            f"|{CACHE_VERSION}"
        )
        return self.folder / (hashlib.sha1(os.fsencode(text)).hexdigest() + ".pt")

    def _problem(self, entry) -> str | None:
        """Why a cached entry cannot be used, or None."""
        if not isinstance(entry, torch.Tensor):
            return f"holds a {type(entry).__name__}, not a tensor"
        if entry.dtype != torch.float32 or entry.dim() != 2 or entry.shape[0] != self.n_mels:
            return (
                f"holds a {entry.dtype} tensor of shape {tuple(entry.shape)}, expected float32 "
                f"({self.n_mels}, frames)"
            )
        if entry.shape[1] == 0:
            return "holds no frames"
        if not bool(torch.isfinite(entry).all()):
            return "holds NaN or Inf values"
        return None

    def _read_entry(self, key: Path, path: Path) -> torch.Tensor | None:
        """The cached log-Mel of ``path`` at ``key``, or None (absent, or damaged: then it
        is deleted with a warning naming it, and rebuilt)."""
        if not key.exists():
            return None
        try:
            entry = torch.load(key, weights_only=True)  # tensors only: no code runs
            problem = self._problem(entry)
        except Exception as err:  # any unpickling error
            problem = f"is unreadable ({type(err).__name__})"
        if problem is None:
            return entry
        warnings.warn(
            f"{key}: damaged feature-cache entry of {path} ({problem}); rebuilding it",
            CacheWarning,
            stacklevel=3,
        )
        key.unlink(missing_ok=True)
        return None

    def get(self, path: str | os.PathLike) -> torch.Tensor:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: audio file not found")
        key = self._key(path)
        lm = self._read_entry(key, path)
        if lm is not None:
            return lm
        try:
            blocks = iter_log_mel(
                iter_audio(path, self.features.sample_rate), self.n_mels, self.features
            )
            lm = torch.cat(list(blocks), dim=1)
        except AudioError:
            raise
        except ValueError as err:  # too short for one frame
            raise AudioError(path, str(err)) from None
        if not bool(torch.isfinite(lm).all()):
            raise AudioError(path, "log-Mel features are not finite (samples too large?)")
        buffer = io.BytesIO()
        torch.save(lm.contiguous(), buffer)
        write_atomic(key, buffer.getvalue())  # mode from the umask, like every output
        return lm

    def warm(self, items: list[Item], desc: str = "log-Mel features") -> dict[Path, torch.Tensor]:
        """Features of every item (with a progress bar on a terminal); returns
        {path: log-Mel}."""
        with progress(items, desc, unit="file") as bar:
            return {item.path: self.get(item.path) for item in bar}
