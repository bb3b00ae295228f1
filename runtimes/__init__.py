"""Runtimes: one module per inference engine, behind one Session API."""
