"""Render: a JobSpec and its steps -> the sbatch script (Jinja templates, every shell value quoted)."""

from hpc_ft.render.shell import ShellVar, shell_join, shell_quote
from hpc_ft.render.render import JobScript, Step, render_job_script, template_env

__all__ = ["JobScript", "ShellVar", "Step", "render_job_script", "shell_join", "shell_quote", "template_env"]
