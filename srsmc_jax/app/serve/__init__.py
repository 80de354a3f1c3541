"""``srsmc serve``: an OpenAI-compatible HTTP server for SR-SMC with continuous batching at block
boundaries and streaming of settled text (docs/serving.md). ``server`` is the HTTP layer (needs the
``[serve]`` extra: Starlette and uvicorn), ``api`` parses requests and builds responses, ``engine``
runs the slots."""
