"""Ironflow: event-driven durable workflows for Python."""
