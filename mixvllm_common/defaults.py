"""Each default the programs share, written once."""

from __future__ import annotations

DEFAULT_MODEL_SERVER_URL = "http://localhost:8000"
MODEL_SERVER_URL_ENV = "MODEL_SERVER_URL"
# The model server requires VLLM_API_KEY; clients also accept the OpenAI SDK's variable.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
CLIENT_API_KEY_ENVS = (VLLM_API_KEY_ENV, "OPENAI_API_KEY")

TERMINAL_ENV_PREFIX = "MIXVLLM_TERMINAL_"
DEFAULT_TERMINAL_HOST = "127.0.0.1"
DEFAULT_TERMINAL_PORT = 8888
