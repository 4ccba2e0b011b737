"""Value types, the error tree and logging set-up; imports nothing else of marketrec."""
