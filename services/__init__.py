"""Ironflow's server: one package per service, plus `core` (what they share) and `server` (composition)."""
