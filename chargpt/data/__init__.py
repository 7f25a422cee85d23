"""The corpus: its config, download, verification and split (corpus), and batches of windows (batches)."""
