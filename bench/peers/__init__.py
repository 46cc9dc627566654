"""Harnesses that drive peer systems (Celery, DBOS) through their public APIs, for comparison.

Each peer runs in its own virtualenv under bench/.venvs/ (see bench/_peers.py), never in the project's.
"""
