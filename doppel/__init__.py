"""Doppel's shared library: settings, the conversation model, the object store and the rpc helpers."""

__version__ = "0.1.0"
