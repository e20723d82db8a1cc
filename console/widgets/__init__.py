"""Widgets of the console: the keyed table, the chrome lines, the prompt."""
