"""hpc-ft: Hydra overrides -> a correct, reproducible LLM fine-tuning job on Slurm, watched to the end."""

__version__ = "0.1.0"
