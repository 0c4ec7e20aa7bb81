"""Container images as managed artifacts: recipes, Dockerfile conversion, builds, the lock, verification, runtimes.

    recipes   list_recipes, find_recipe, load_recipe, lint_recipe, lint_all   (spython parse/write)
    convert   convert_dockerfile, convert_definition                         (Dockerfile <-> .def)
    lock      load_lock, write_lock, ImageLock, ImageEntry                   (containers/images.lock)
    build     plan_build, render_commands, render_job_script, run_build      (singularity build / pull)
    verify    verify_image, record_digest, record_image, sha256_file         (size, sha256, %test)
    runtime   exec_argv, env_exports, exec_environ, env_prefix, check_image  (singularity | apptainer | none)

Nothing here imports torch; spython, yaml and jinja2 are imported inside the functions that use them.
"""

from hpc_ft.containers.build import BuildPlan, plan_build, render_commands, render_job_script, run_build
from hpc_ft.containers.convert import convert_definition, convert_dockerfile
from hpc_ft.containers.lock import ImageEntry, ImageLock, default_lock_path, load_lock, write_lock
from hpc_ft.containers.recipes import (
    REQUIRED_LABELS,
    Problem,
    Recipe,
    find_recipe,
    lint_all,
    lint_recipe,
    list_recipes,
    load_recipe,
    recipes_dir,
)
from hpc_ft.containers.runtime import (
    RUNTIMES,
    check_image,
    detect_runtime,
    env_exports,
    env_prefix,
    exec_argv,
    exec_environ,
    format_binds,
    get_runtime,
    require_binary,
    runtime_binary,
)
from hpc_ft.containers.verify import Check, VerifyResult, record_digest, record_image, sha256_file, verify_image

__all__ = [
    "BuildPlan", "plan_build", "render_commands", "render_job_script", "run_build",
    "convert_definition", "convert_dockerfile",
    "ImageEntry", "ImageLock", "default_lock_path", "load_lock", "write_lock",
    "REQUIRED_LABELS", "Problem", "Recipe", "find_recipe", "lint_all", "lint_recipe", "list_recipes", "load_recipe",
    "recipes_dir",
    "RUNTIMES", "check_image", "detect_runtime", "env_exports", "env_prefix", "exec_argv", "exec_environ",
    "format_binds", "get_runtime", "require_binary", "runtime_binary",
    "Check", "VerifyResult", "record_digest", "record_image", "sha256_file", "verify_image",
]
