"""The receive side: what arrives from the network, up to complete heaps and chunks.

Source URIs and the readers they open, SPEAD item descriptors, the receive
counters, heap records, the reference workloads, and the builder that makes
a ``[[stream]]`` section's compiled streams and chunk group.  The per-packet
work is compiled (``daqd._spead``); this package opens, configures and reads.
"""
