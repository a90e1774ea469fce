"""daqd: a data-acquisition daemon for SPEAD instrument streams."""

__version__ = "0.1.0"
