"""`simcli serve`: the warm embedding service (the `serve` extra: FastAPI, uvicorn, prometheus_client).

Modules: `options` (the settings and their defaults), `registry` (loads the models and index folders the
server holds, reloads an index whose folder changed), `batcher` (the model worker thread that merges
concurrent requests into the encoder's token-budget batches), `api_errors` (the OpenAI error shape),
`metrics` (Prometheus), `app` (the FastAPI routes), `server` (uvicorn, signals, the startup line).
Only `simcli.cli.serve` imports this package, inside the command: `simcli --help` never loads FastAPI.
"""
