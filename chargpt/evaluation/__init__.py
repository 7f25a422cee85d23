"""Scoring a text: BPC and next-byte accuracy under the window protocol, static and dynamic (scoring), and its
config."""
