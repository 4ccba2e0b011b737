"""Retrieval: two-tower models that turn users and items into vectors, and the approximate
nearest-neighbour index that finds an item candidate set for a user vector in well under a
millisecond."""
