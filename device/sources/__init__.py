"""Audio sources: each yields :class:`mica.device.block.Block` objects."""
