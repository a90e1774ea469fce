"""daqd: a data-acquisition daemon for SPEAD instrument streams."""

import os

__version__ = "0.1.0"


def get_include():
    """Return the directory of daqd_place.h, for compiling a placement hook."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")
