"""Between the receive side and the sinks: records, buffers, flush policies, the write-ahead log.

Nothing here knows sockets or SPEAD packets: records come in through
``Buffer.put`` and leave through the sinks' ``write``.
"""
