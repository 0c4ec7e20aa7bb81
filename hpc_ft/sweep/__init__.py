"""Sweeps: `hpc-ft train -m ...` expanded into points, pruned by the planner, submitted as one job array.

compose (fast point composition) -> launch (render every kept point + the array dispatcher, submit,
register) -> status (one sacct call for every task) -> plot (throughput per point).
"""
