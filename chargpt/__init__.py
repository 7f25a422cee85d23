"""chargpt: a byte-level GPT trained with the 1cycle policy, as a DVC + MLflow pipeline (see README.md)."""
