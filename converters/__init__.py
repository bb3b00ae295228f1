"""Converters: one module per output format, registered in :mod:`edgekit.converters.registry`."""
