"""Using a trained model: loading and sampling (inference), compression, and their commands."""
