"""The byte-level transformer (gpt) and its config."""
