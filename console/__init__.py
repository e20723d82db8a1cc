"""The flex operations console (Textual). Reads snapshots, sends intents; no SSH, no YAML."""
