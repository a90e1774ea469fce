"""``daqd top``: a live monitor of one or many daemons (model, feed, Textual app)."""
