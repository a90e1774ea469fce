cdef extern from "debug.h":
    const int DAQD_DEBUG
