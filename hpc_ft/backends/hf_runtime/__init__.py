"""The hf backend's programs that run on the compute node (torch, transformers, peft); never imported by the submit side."""
