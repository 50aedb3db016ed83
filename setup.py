"""Builds the optional compiled columnar codec (``driftline.schemas._ccolumnar``); metadata is in pyproject.toml.

The extension is an optimisation, not a requirement: where Cython or a C
compiler is missing, the install goes on without it and
:mod:`driftline.schemas.columnar` uses its numpy implementation.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """``build_ext`` that warns instead of failing when the extension cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure leaves the numpy codec in use
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - as above
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"WARNING: driftline's compiled codec was not built ({type(exc).__name__}: {exc}); "
              "the numpy codec will be used", file=sys.stderr)


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is missing: driftline's compiled codec is not built", file=sys.stderr)
        return []
    ext = Extension("driftline.schemas._ccolumnar", ["schemas/_ccolumnar.pyx"], extra_compile_args=["-O2"])
    return cythonize([ext], language_level=3, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
