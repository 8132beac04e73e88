"""`editr1 serve-reward`: the score-logit judge behind an OpenAI-compatible HTTP API.

`protocol` parses and answers the chat-completions subset, `batcher` shares judge forward passes
between concurrent requests, `reward_server` is the HTTP front (a plain ASGI app on uvicorn),
`config` its typed settings.
"""
