"""Submit: a rendered job script -> submitit (Slurm or local); run directories and their records."""
