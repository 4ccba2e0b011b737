"""Experimentation: assignment of users to A/B variants (`assignment.py`); staged rollout,
exposure logging and analysis build on it (issue 6)."""
