"""Dataset preparation: turn public or synthetic sources into the jsonl splits the backends train on."""
