/* DAQD_DEBUG is 1 in a DAQD_DEBUG=1 build (setup.py defines it), else 0. */
#ifndef DAQD_DEBUG
#define DAQD_DEBUG 0
#endif
