"""Embedded worker example: `uvicorn examples.embedded_worker.app:app`."""
