"""Build the example placement hook against daqd's header."""

from Cython.Build import cythonize
from setuptools import Extension, setup

import daqd

setup(
    name="frequency_place",
    ext_modules=cythonize(
        [Extension("frequency_place", ["frequency_place.pyx"], include_dirs=[daqd.get_include()])],
        include_path=[daqd.get_include()],
    ),
)
