"""The Gradio UI; it talks to the services only through doppel's gRPC clients."""
