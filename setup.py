"""Build of the native CPU core (docs/design.md#native-cpu-core); everything else about the
package is in pyproject.toml.

The core is plain C++ (GCC/Clang vector extensions, no libtorch, no Python API), linked into
one shared library, ``atfnn_fast/kernels/_atfnn_native*.so``, that ``kernels/native.py`` loads
with ctypes. Each kernel source is compiled once per ISA (generic, and on x86-64 also AVX2 +
FMA and AVX-512) with that ISA's flags; ``kernels/csrc/dispatch.cpp`` (baseline flags) picks
one at run time. Where there is no C++ compiler, or the build fails, the package installs
without the library and runs its ATen CPU path: the build says so here, and the package says
so once at run time.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ["kernels/freq_encoder_op/native.cpp", "kernels/band_attention_op/native.cpp"]
DISPATCH = "kernels/csrc/dispatch.cpp"
COMMON = ["-std=c++17", "-O3", "-g0", "-fno-math-errno", "-fPIC"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "x64")
ISA_FLAGS = {0: []}
if X86:
    ISA_FLAGS[1] = ["-mavx2", "-mfma"]
    ISA_FLAGS[2] = [
        "-mavx2",
        "-mfma",
        "-mavx512f",
        "-mavx512dq",
        "-mavx512bw",
        "-mavx512vl",
        "-mprefer-vector-width=512",
    ]


class BuildNative(build_ext):
    """Compiles the per-ISA objects and links the library; a failure is not fatal."""

    def build_extension(self, ext):
        if ext.name != "atfnn_fast.kernels._atfnn_native":
            return super().build_extension(ext)
        if os.environ.get("ATFNN_NO_NATIVE"):
            print("atfnn-fast: ATFNN_NO_NATIVE is set: not building the native CPU core")
            return
        try:
            self._build_native(ext)
        except Exception as err:  # a missing or failing compiler: install without the core
            stale = self.get_ext_fullpath(ext.name)  # an earlier build's library is not this one
            if os.path.exists(stale):
                os.remove(stale)
            print(
                f"atfnn-fast: WARNING: the native CPU core did not build ({err}); the package "
                "installs without it and runs its ATen CPU path. Install g++ or clang++ and "
                "reinstall to get it.",
                file=sys.stderr,
            )

    def _build_native(self, ext):
        cc = self.compiler
        if cc.compiler_type == "msvc":
            raise RuntimeError("MSVC has no GCC vector extensions; use clang-cl or MinGW")
        objects = []
        for isa, flags in ISA_FLAGS.items():
            objects += cc.compile(
                KERNELS,
                output_dir=os.path.join(self.build_temp, f"isa{isa}"),
                macros=[("ATFNN_ISA", str(isa))],
                extra_postargs=COMMON + flags,
            )
        objects += cc.compile(
            [DISPATCH],
            output_dir=os.path.join(self.build_temp, "dispatch"),
            macros=[("ATFNN_HAVE_X86", "1")] if X86 else [],
            extra_postargs=COMMON,
        )
        path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cc.link_shared_object(objects, path, target_lang="c++", extra_postargs=["-g0"])


setup(
    ext_modules=[Extension("atfnn_fast.kernels._atfnn_native", sources=[*KERNELS, DISPATCH])],
    cmdclass={"build_ext": BuildNative},
)
