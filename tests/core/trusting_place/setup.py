"""Build the buggy test hook against daqd's header (as examples/place_hook/setup.py)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

import daqd

setup(
    name="trusting_place",
    ext_modules=cythonize(
        [Extension("trusting_place", ["trusting_place.pyx"], include_dirs=[daqd.get_include()])],
        include_path=[daqd.get_include()],
    ),
)
