"""gRPC plumbing shared by every service and client: bootstrap, interceptors, channels."""
