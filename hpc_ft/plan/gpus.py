"""The GPU catalogue: the one place that knows each accelerator's memory, precisions and speed.

Everything else in hpc-ft (the planner, the V100 guards, the Slurm gres defaults) asks this
module. Figures are per device:

* ``memory_gib``: the memory the driver reports (``nvidia-smi --query-gpu=memory.total``, MiB / 1024).
  The CUDA context is *not* subtracted here; the memory model adds it as a component.
* ``bf16``: whether the GPU has a bf16 hardware path (compute capability >= 8.0). On V100 (sm70)
  PyTorch still *allocates* bf16 tensors and NeMo 24.03 runs ``trainer.precision=bf16`` through
  emulated, slower paths (reference notes §3), so this is advice, not a hard limit.
* ``flash_attention``: FlashAttention / cuDNN fused attention need sm80+; TransformerEngine falls
  back to unfused attention below that, which stores the ``s x s`` score matrices.
* ``peak_tflops``: dense tensor-core peak by dtype (vendor data sheets, SXM parts); ``None`` where
  the dtype has no tensor-core path.
* ``cuda_context_gib``: device memory taken by the CUDA context, cuBLAS/cuDNN workspaces and
  lazy-loaded kernels of a PyTorch process (typical observed values; an estimate).

The pseudo-device ``cpu`` (the local default) has the host's memory, read from the OS, unless a
value is configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from hpc_ft.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Gpu:
    """One accelerator model (or the host CPU) as the planner sees it."""

    name: str
    memory_gib: float
    bf16: bool
    fp16: bool
    compute_capability: tuple[int, int] | None
    peak_tflops: Mapping[str, float | None]
    cuda_context_gib: float
    aliases: tuple[str, ...] = ()

    @property
    def is_cpu(self) -> bool:
        return self.compute_capability is None

    @property
    def flash_attention(self) -> bool:
        """FlashAttention (and TE fused attention) run only on sm80 and newer."""
        return self.compute_capability is not None and self.compute_capability >= (8, 0)


def _tflops(fp16: float | None, bf16: float | None, fp32: float | None, tf32: float | None = None):
    return MappingProxyType({"fp16": fp16, "bf16": bf16, "fp32": fp32, "tf32": tf32})


_GIB_PER_MIB = 1 / 1024

GPUS: Mapping[str, Gpu] = MappingProxyType(
    {
        g.name: g
        for g in (
            Gpu(
                name="V100-16GB",
                memory_gib=16160 * _GIB_PER_MIB,
                bf16=False,
                fp16=True,
                compute_capability=(7, 0),
                peak_tflops=_tflops(fp16=125.0, bf16=None, fp32=15.7),
                cuda_context_gib=0.40,
                aliases=("v100-sxm2-16gb", "tesla-v100-16gb"),
            ),
            Gpu(
                name="V100-32GB",
                memory_gib=32510 * _GIB_PER_MIB,
                bf16=False,
                fp16=True,
                compute_capability=(7, 0),
                peak_tflops=_tflops(fp16=125.0, bf16=None, fp32=15.7),
                cuda_context_gib=0.40,
                aliases=("v100-sxm2-32gb", "v100s", "tesla-v100-32gb"),
            ),
            Gpu(
                name="A100-40GB",
                memory_gib=40960 * _GIB_PER_MIB,
                bf16=True,
                fp16=True,
                compute_capability=(8, 0),
                peak_tflops=_tflops(fp16=312.0, bf16=312.0, fp32=19.5, tf32=156.0),
                cuda_context_gib=0.50,
                aliases=("a100-sxm4-40gb", "a100-pcie-40gb"),
            ),
            Gpu(
                name="A100-80GB",
                memory_gib=81920 * _GIB_PER_MIB,
                bf16=True,
                fp16=True,
                compute_capability=(8, 0),
                peak_tflops=_tflops(fp16=312.0, bf16=312.0, fp32=19.5, tf32=156.0),
                cuda_context_gib=0.50,
                aliases=("a100-sxm4-80gb", "a100-pcie-80gb"),
            ),
            Gpu(
                name="H100-80GB",
                memory_gib=81559 * _GIB_PER_MIB,
                bf16=True,
                fp16=True,
                compute_capability=(9, 0),
                peak_tflops=_tflops(fp16=989.0, bf16=989.0, fp32=67.0, tf32=494.0),
                cuda_context_gib=0.55,
                aliases=("h100", "h100-sxm5-80gb", "h100-sxm"),
            ),
            Gpu(
                name="cpu",
                memory_gib=0.0,  # replaced by the host's memory (or a configured value) in get_gpu
                bf16=True,  # PyTorch runs bf16 autocast on CPU (slowly on cores without AVX512-BF16/AMX)
                fp16=False,  # no fp16 training path on CPU in the hf backend
                compute_capability=None,
                peak_tflops=_tflops(fp16=None, bf16=None, fp32=None),
                cuda_context_gib=0.0,
                aliases=("local", "host"),
            ),
        )
    }
)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY: Mapping[str, str] = MappingProxyType(
    {
        **{_normalise(alias): g.name for g in GPUS.values() for alias in g.aliases},
        **{_normalise(g.name): g.name for g in GPUS.values()},
    }
)


#: names sold in more than one memory size: the planner cannot guess which one a node has
AMBIGUOUS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "a100": ("A100-40GB", "A100-80GB"),
    "v100": ("V100-16GB", "V100-32GB"),
    "teslav100": ("V100-16GB", "V100-32GB"),
})


def host_memory_gib() -> float:
    """Physical memory of this host in GiB (0.0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return 0.0


def get_gpu(name: str, *, cpu_memory_gib: float | None = None, key: str = "cluster.gpu.model") -> Gpu:
    """Look a GPU up by name, case- and punctuation-insensitively ('v100-16gb', 'V100_16GB').

    ``cpu`` gets ``cpu_memory_gib`` when given, else the host's physical memory.
    Unknown names raise :class:`UserError` naming ``key`` and the closest known name; a name sold in
    two memory sizes ('A100', 'V100') is refused naming both.
    """
    sizes = AMBIGUOUS.get(_normalise(str(name)))
    if sizes:
        raise UserError(
            f"{key}={name}: ambiguous, it comes in {' and '.join(sizes)}. "
            f"Name the size your nodes have: {key}={sizes[0]} or {key}={sizes[-1]}."
        )
    canonical = _BY_KEY.get(_normalise(str(name)))
    if canonical is None:
        names = list(GPUS)
        hint = did_you_mean(str(name), names) or did_you_mean(str(name).upper(), names)
        raise UserError(
            f"{key}={name!r}: unknown GPU model.{hint} Known models: {', '.join(names)}."
        )
    gpu = GPUS[canonical]
    if gpu.is_cpu:
        memory = cpu_memory_gib if cpu_memory_gib is not None else host_memory_gib()
        if memory <= 0:
            raise UserError(
                f"{key}=cpu: the host memory could not be read; set the host memory in GiB "
                "(PlanRequest.cpu_memory_gib)."
            )
        gpu = Gpu(**{**gpu.__dict__, "memory_gib": float(memory)})
    return gpu


def gpu_names() -> tuple[str, ...]:
    """The canonical names, in catalogue order."""
    return tuple(GPUS)
