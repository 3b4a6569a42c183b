"""Dash Pages: one module per page, layout and callbacks side by side."""
