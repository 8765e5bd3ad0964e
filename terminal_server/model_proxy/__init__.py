"""The model pass-through of the team modes: sessions reach the model server through the
terminal server with a per-user key; the server adds the real key, counts each user's tokens
and enforces their limits (docs/team.md#the-model-per-user)."""
