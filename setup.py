"""Build the compiled receive core: only the extension list and build knobs live here.

DAQD_DEBUG=1    bounds checks, line tracing and DAQD_DEBUG defined (slow; for tests)
DAQD_CYTHON_ANNOTATE=1   write cython -a HTML next to each .pyx
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("DAQD_DEBUG", "0") not in ("", "0")
annotate = os.environ.get("DAQD_CYTHON_ANNOTATE", "0") not in ("", "0")

compile_args = ["-O3", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
macros = []
directives = {"language_level": "3"}
if debug:
    compile_args = ["-O0", "-g", "-Wall", "-Wno-unused-function"]
    macros = [("DAQD_DEBUG", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    directives.update(boundscheck=True, wraparound=True, linetrace=True)



def extension(name: str, source: str) -> Extension:
    """One of the two compiled modules, with the build knobs above."""
    return Extension(name, [source], include_dirs=["cython_ext", "daqd/include"],
                     extra_compile_args=compile_args, define_macros=macros)


extensions = [
    extension("daqd._spead", "cython_ext/spead.pyx"),  # the receive core: all the daemon runs
    # spead2 compatibility (Spead2Placement), for the tests and benchmarks only
    extension("daqd._spead2compat", "cython_ext/spead2_compat.pyx"),
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["cython_ext", "daqd/include"],
        compiler_directives=directives,
        annotate=annotate or debug,
    ),
)
