"""The planner's output: one frozen `PlanResult` (verdict, breakdown, rule findings, ranked layouts)."""

from __future__ import annotations

from dataclasses import dataclass

from hpc_ft.plan.gpus import Gpu
from hpc_ft.plan.memory import COMPONENTS, Estimate
from hpc_ft.plan.request import PlanRequest
from hpc_ft.plan.rules import Violation
from hpc_ft.plan.search import Alternative, Lever


@dataclass(frozen=True)
class PlanResult:
    """What :func:`hpc_ft.plan.plan` found for one request.

    * ``request``, ``gpu``: the input and the catalogue entry it resolved to.
    * ``estimate``: the memory model's verdict (None when the request's values are invalid).
    * ``violations``: rule errors (the job would be refused or crash); ``warnings``: rule warnings.
    * ``alternatives``: layouts of the same job on the same GPUs, ranked best first
      (empty when the search was not asked for).
    * ``levers``: one-step changes, evaluated, offered when the request does not fit.

    Derived: ``memory_fits`` (the memory model's verdict alone), ``fits`` (the job can be placed:
    memory fits and no rule error stands, so a verdict never says FITS above a list of errors),
    ``ok`` (the same as ``fits``), ``per_gpu_gib``, ``capacity_gib``, ``headroom_gib``,
    ``breakdown``, ``reason``, ``best``.
    """

    request: PlanRequest
    gpu: Gpu
    estimate: Estimate | None
    violations: tuple[Violation, ...]
    warnings: tuple[Violation, ...]
    alternatives: tuple[Alternative, ...] = ()
    levers: tuple[Lever, ...] = ()

    @property
    def memory_fits(self) -> bool:
        """The memory verdict alone: the estimate fits in the device after the safety margin."""
        return bool(self.estimate and self.estimate.fits)

    @property
    def fits(self) -> bool:
        """The job fits: in memory, and no rule error stands (a job that breaks a rule fits nowhere)."""
        return self.memory_fits and not self.violations

    @property
    def ok(self) -> bool:
        """Safe to submit: fits in memory and breaks no rule (warnings allowed)."""
        return self.fits

    @property
    def per_gpu_gib(self) -> float:
        return self.estimate.per_gpu_gib if self.estimate else 0.0

    @property
    def capacity_gib(self) -> float:
        return self.estimate.capacity_gib if self.estimate else self.gpu.memory_gib

    @property
    def headroom_gib(self) -> float:
        """Memory left free on the device (negative: short by that much)."""
        return self.estimate.headroom_gib if self.estimate else 0.0

    @property
    def breakdown(self) -> dict[str, float]:
        if self.estimate:
            return self.estimate.breakdown
        return {name: 0.0 for name in COMPONENTS}

    @property
    def reason(self) -> str:
        """Why the request is not ok ('' when it is): the first rule error, else the memory reason."""
        if self.violations:
            return str(self.violations[0])
        if self.estimate is None:
            return "no estimate"
        return self.estimate.reason

    @property
    def best(self) -> Alternative | None:
        """The best runnable alternative layout, if any."""
        for alt in self.alternatives:
            if alt.ok:
                return alt
        return None
