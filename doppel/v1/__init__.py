"""Generated gRPC stubs of the `doppel.v1` API (`python -m doppel.codegen` writes them; never edit)."""
