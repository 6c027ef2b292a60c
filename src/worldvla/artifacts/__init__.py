"""Saved artifacts: what training writes and inference reads (checkpoints and run directories)."""
