"""Push endpoint example: `uvicorn examples.push_endpoint.app:app`."""
