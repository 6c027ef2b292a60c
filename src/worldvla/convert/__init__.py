"""Checkpoint conversion between Hugging Face Chameleon folders and this project (``worldvla convert``)."""
