"""The recommendation pipeline: retrieve → rank → rules → diversity → exploration.

`Recommender` is the one path that offline evaluation, `marketrec recommend` and the service
use; each step is a small module of its own.
"""
