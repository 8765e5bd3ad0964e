"""What the three programs share: option tables, URL forms and defaults (stdlib only).

Stdlib only: the model image installs the launcher with `pip install --no-deps` on top of
vLLM's image, and the terminal server must stay light.
"""
