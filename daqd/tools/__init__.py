"""Commands beside the daemon: ``daqd simulate``, ``daqd dump`` and ``daqd bench``."""
