"""What the three programs share: option tables, URL forms, defaults, the names they agree
on (names.py), one HTTP client (http_client.py) and untrusted text made safe to show on a
terminal (terminal_text.py); stdlib only.

Stdlib only: the model image installs the launcher with `pip install --no-deps` on top of
vLLM's image, and the terminal server must stay light.
"""
