"""The server service."""
