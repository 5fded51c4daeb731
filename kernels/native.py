"""The native CPU core's loader (docs/design.md#native-cpu-core): the shared library that
``setup.py`` builds from ``kernels/csrc`` and the op folders' ``native.cpp``, its run-time ISA
choice and the threads that run it.

* **No torch ABI tie.** The library is plain C++ with a C interface and no libtorch or Python
  dependency, called through :mod:`ctypes` on raw data pointers, so one build serves every torch
  (and every Python 3 minor version) the package supports.
* **ISA.** Each kernel is compiled for AVX-512, AVX2 + FMA and a generic baseline;
  :func:`isa` is the best the CPU runs, unless ``ATFNN_NATIVE_ISA`` (``avx512``, ``avx2``,
  ``generic``; read at import) or :func:`use_isa` names one.
* **Threads.** :func:`run_chunks` splits the frames into one contiguous chunk per intra-op
  thread of torch (``torch.get_num_threads()``) and runs them on a thread pool of this
  module; ctypes releases the GIL during each call. No OpenMP runtime is loaded. Calls from
  several Python threads at once are safe: the library keeps no state (each call allocates
  its own scratch).
* **Fallback.** Where the library was not built (no compiler at install time, a failed
  build, another platform), :func:`available` is False and the CPU implementation keeps its
  ATen path; :func:`warn_missing` says so once, in one line, naming what to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ISAS = ("generic", "avx2", "avx512")  # index = the library's ISA code
ENV_ISA = "ATFNN_NATIVE_ISA"
LIB_STEM = "_atfnn_native"
# below this many frames per thread a chunk's work (~4 us a frame) no longer pays for a
# thread hand-off
MIN_FRAMES_PER_THREAD = 16

_lib: ctypes.CDLL | None = None
_load_error: str | None = None
_loaded = False
_lock = threading.Lock()
_forced: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_warned = False


def library_path() -> Path | None:
    """The built library beside this module (``_atfnn_native*.so`` / ``.pyd`` / ``.dylib``)."""
    here = Path(__file__).resolve().parent
    for pattern in (f"{LIB_STEM}*.so", f"{LIB_STEM}*.pyd", f"{LIB_STEM}*.dylib"):
        found = sorted(here.glob(pattern))
        if found:
            return found[0]
    return None


def _load() -> ctypes.CDLL | None:
    global _lib, _load_error, _loaded
    if _loaded:
        return _lib
    with _lock:
        if _loaded:
            return _lib
        path = library_path()
        if path is None:
            _load_error = "the native CPU core was not built when the package was installed"
        else:
            try:
                lib = ctypes.CDLL(str(path))
                _declare(lib)
                _lib = lib
            except (OSError, AttributeError) as err:
                _load_error = f"the native CPU core at {path} does not load ({err})"
        _loaded = True
    return _lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i, f, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
    lib.atfnn_isa_supported.argtypes = [i]
    lib.atfnn_isa_supported.restype = i
    lib.atfnn_isa_built.argtypes = []
    lib.atfnn_isa_built.restype = i
    lib.atfnn_fenc_forward.argtypes = [i, p, f, p, p, p, p, p, n, n]
    lib.atfnn_fenc_forward.restype = i
    lib.atfnn_fenc_backward.argtypes = [i, p, f, p, p, p, p, p, p, p, p, n, n]
    lib.atfnn_fenc_backward.restype = i
    lib.atfnn_ba_forward.argtypes = [i, p, p, p, p, p, p, p, p, n, n]
    lib.atfnn_ba_forward.restype = i
    lib.atfnn_ba_backward.argtypes = [i, p, p, p, p, p, p, p, p, p, p, p, p, n, n]
    lib.atfnn_ba_backward.restype = i


def library() -> ctypes.CDLL:
    """The loaded library; RuntimeError naming why where it is missing."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"{_load_error}; {INSTALL_HINT}")
    return lib


INSTALL_HINT = (
    "install a C++ compiler (g++ or clang++; Xcode's command line tools on macOS, MSVC Build "
    "Tools on Windows) and reinstall atfnn-fast (pip install --force-reinstall --no-deps .) to "
    "build it"
)


def available() -> bool:
    """Whether the native core is built and loads on this machine."""
    return _load() is not None


def missing_reason() -> str | None:
    """Why the native core is not available (None where it is)."""
    _load()
    return _load_error


def warn_missing() -> None:
    """One line, once per process, where CPU work falls back to the ATen path."""
    global _warned
    if _warned or available():
        return
    _warned = True
    # warn_explicit with a file that has no source: Python prints one line, no code line
    warnings.warn_explicit(
        f"atfnn-fast: {missing_reason()}, so CPU runs take the slower ATen path; {INSTALL_HINT}",
        RuntimeWarning,
        filename="atfnn-fast",
        lineno=0,
        module=__name__,
    )


def supported_isas() -> list[str]:
    """The ISA paths this build has and this CPU runs, best last."""
    lib = _load()
    if lib is None:
        return []
    return [name for code, name in enumerate(ISAS) if lib.atfnn_isa_supported(code)]


def _parse_isa(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in ISAS:
        raise ValueError(f"{source} must be one of {ISAS}, got {name!r}")
    return value


_env_isa = os.environ.get(ENV_ISA, "").strip()
if _env_isa:
    _forced = _parse_isa(_env_isa, ENV_ISA)


def isa() -> str:
    """The ISA path in force: the forced one (:func:`use_isa`, ``ATFNN_NATIVE_ISA``) or the
    best this CPU runs. RuntimeError where a forced ISA cannot run here."""
    supported = supported_isas()
    if not supported:
        library()  # raises, naming why
    if _forced is not None:
        if _forced not in supported:
            raise RuntimeError(
                f"{ENV_ISA}={_forced}, but this CPU (or this build) runs only {supported}"
            )
        return _forced
    return supported[-1]


def set_isa(name: str | None) -> None:
    """Force an ISA path (``generic``, ``avx2``, ``avx512``), or None for the best."""
    global _forced
    _forced = None if name is None else _parse_isa(name, "isa")


@contextlib.contextmanager
def use_isa(name: str | None) -> Iterator[None]:
    """Run a block on another ISA path, restoring the previous choice afterwards."""
    previous = _forced
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def isa_code() -> int:
    return ISAS.index(isa())


def info() -> dict:
    """What ``atfnn-fast info`` prints of the CPU path."""
    if not available():
        return {"cpu_path": "aten", "native": False, "reason": missing_reason()}
    return {
        "cpu_path": "native",
        "native": True,
        "isa": isa(),
        "isas_supported": supported_isas(),
        "library": str(library_path()),
        "threads": torch.get_num_threads(),
    }


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atfnn-native")
            _pool_size = workers
        return _pool


def chunks(n: int, threads: int | None = None, per_item: int = 1) -> list[tuple[int, int]]:
    """``[0, n)`` (items of ``per_item`` frames each) split into at most one contiguous range
    per thread (torch's intra-op threads by default), none under
    :data:`MIN_FRAMES_PER_THREAD` frames."""
    threads = torch.get_num_threads() if threads is None else threads
    parts = max(1, min(threads, n, n * per_item // MIN_FRAMES_PER_THREAD))
    bounds = [n * q // parts for q in range(parts + 1)]
    return [(bounds[q], bounds[q + 1]) for q in range(parts)]


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """``[0, n)`` in ranges of ``size`` items (the last shorter), whatever the thread count:
    a backward's per-range parameter-gradient sums, added in range order, then give the same
    bits on any number of threads."""
    return [(start, min(start + size, n)) for start in range(0, n, size)] or [(0, 0)]


def run_chunks(call: Callable[[int, int, int], int], ranges: list[tuple[int, int]]) -> None:
    """``call(index, n0, n1)`` for each range, on torch's intra-op threads (this thread and
    the pool); raises if any returns non-zero (1: ISA not available, 2: out of memory)."""
    if len(ranges) == 1:
        codes = [call(0, *ranges[0])]
    else:
        workers = max(1, min(torch.get_num_threads(), len(ranges)))
        if workers == 1:
            codes = [call(q, *r) for q, r in enumerate(ranges)]
        else:
            pool = _executor(workers)
            futures = [pool.submit(call, q, *r) for q, r in enumerate(ranges)]
            codes = [fut.result() for fut in futures]
    for code in codes:
        if code == 1:
            raise RuntimeError(f"native CPU core: ISA path {isa()!r} is not available here")
        if code == 2:
            raise MemoryError("native CPU core: out of memory for its scratch buffers")
        if code != 0:
            raise RuntimeError(f"native CPU core: call failed with code {code}")


def ordered_sum(partials: torch.Tensor) -> torch.Tensor:
    """The rows of ``partials`` (one per range of :func:`blocks`) added in order, in
    float64, as float32: the same bits whatever the thread count."""
    total = partials[0].double().clone()
    for row in partials[1:]:
        total += row
    return total.float()
