"""What the services share: storage, streams, subjects and patterns, errors, settings."""
