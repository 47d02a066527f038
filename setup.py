"""Build step of nslab: the native data path of the soft RDMA provider
(nslab/rdma/_softnic.c), compiled at install with the system compiler.

Without a working compiler or Python headers the install still succeeds and
nslab uses the pure-Python provider (nslab.rdma.soft), saying so here and in
`nslab doctor`. NSLAB_REQUIRE_NATIVE=1 makes a failed build an error (CI)."""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]  # fmt: skip
if os.environ.get("NSLAB_NATIVE_SANITIZE") == "address":  # `make test-native-asan`
    FLAGS += ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"]


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc):
        msg = (
            f"nslab: the native RDMA data path (nslab/rdma/_softnic.c) did not build: {exc}\n"
            "nslab: install gcc and python3-dev (scripts/provision.sh does) and reinstall;\n"
            "nslab: until then the pure-Python soft provider is used (see `nslab doctor`)."
        )
        if os.environ.get("NSLAB_REQUIRE_NATIVE") == "1":
            raise SystemExit(msg)
        print(msg, file=sys.stderr)


setup(
    ext_modules=[
        Extension(
            "nslab.rdma._softnic",
            ["nslab/rdma/_softnic.c"],
            extra_compile_args=FLAGS,
            extra_link_args=["-pthread"]
            + (["-fsanitize=address"] if "-fsanitize=address" in FLAGS else []),  # fmt: skip
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
