"""The OpenAI-compatible HTTP API (`doppel serve openai`): personas for every tool that speaks OpenAI's API.

A thin HTTP process in front of the inference service, reached only through its gRPC API (as
the UI is): `/v1/models`, `/v1/chat/completions` and `/v1/completions`, streaming as OpenAI's
server-sent events. `personas` resolves a request's `model` (an id, a persona's name, or
`id:Speaker`), `schema` holds the request bodies, `mapping` turns them into inference requests
and the answers into OpenAI's objects, `errors` speaks OpenAI's error shape, and `app` holds the
routes.
"""
