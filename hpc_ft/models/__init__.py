"""Models: fetch from the Hugging Face Hub at a pinned commit (or from the offline cache), and convert formats.

    fetch     fetch_model, check_revision, hub_cache_dir, cached_revisions, is_offline
    convert   hf_to_nemo_argv, export_commands, nemo_to_hf_argv, merge_lora_nemo_argv, commands_text,
              detect_family, merge_lora (hf backend; imports torch/peft when called)

No torch at import time.
"""

from hpc_ft.models.convert import (
    FAMILIES,
    commands_text,
    detect_family,
    export_commands,
    hf_to_nemo_argv,
    merge_lora,
    merge_lora_nemo_argv,
    nemo_to_hf_argv,
)
from hpc_ft.models.fetch import cached_revisions, check_revision, fetch_model, hub_cache_dir, is_offline

__all__ = [
    "FAMILIES", "commands_text", "detect_family", "export_commands", "hf_to_nemo_argv", "merge_lora",
    "merge_lora_nemo_argv", "nemo_to_hf_argv",
    "cached_revisions", "check_revision", "fetch_model", "hub_cache_dir", "is_offline",
]
