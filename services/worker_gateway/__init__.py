"""The worker_gateway service."""
