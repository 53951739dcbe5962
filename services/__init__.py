"""Doppel services: ingest, trainer and inference, each a core with a thin gRPC servicer."""
