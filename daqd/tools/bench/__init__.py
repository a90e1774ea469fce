"""``daqd bench``: daqd, spead2 and the machine's own limits measured side by side."""
