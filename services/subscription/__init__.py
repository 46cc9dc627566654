"""The subscription service."""
