"""Tracking: parse training logs, event files and checkpoint folders into one RunState per run."""
