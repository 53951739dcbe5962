"""Shared fixtures: a real SeaweedFS S3 server and in-process gRPC servers on port 0."""

import os

# Models never come from a hub here, and no server phones home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

pytest_plugins = ["support.seaweed", "support.grpcserver"]
