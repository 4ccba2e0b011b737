"""The real-time HTTP service (`marketrec serve`): the CONTRACT §6 API over the online state.

`app.create_app` builds the FastAPI app around one worker's `LiveRecommender`;
`server.serve` runs it under granian with one or more worker processes, each of which loads
the model and tails the shared event log.
"""
