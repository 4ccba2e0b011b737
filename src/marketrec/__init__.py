"""marketrec: a real-time, two-stage recommender system for online marketplaces."""

__version__ = "0.1.0"
