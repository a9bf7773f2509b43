"""`petrun plan` and the pre-flight: what a run needs (memory, time) before anything is built.

Nothing in this package imports MindSpore or builds a model; parameter shapes come from
petrun.models.shapes and PET shapes from petrun.plan.pet.
"""
from petrun.plan.estimator import Estimate, estimate, with_budget

__all__ = ["Estimate", "estimate", "with_budget"]
