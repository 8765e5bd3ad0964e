"""Putting answers on the terminal: Markdown and plain renderers, block bounds, page markers."""
