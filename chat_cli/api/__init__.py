"""Talking to the model server: the HTTP transport, the client, SSE parsing and the answer."""
