"""The ranking stage: point-in-time features and a neural re-ranker over retrieved candidates."""
