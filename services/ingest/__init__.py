"""The ingest service: a thin gRPC servicer over a core that knows nothing about gRPC."""
