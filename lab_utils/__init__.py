"""Helpers of the Flan-T5 fine-tuning lab (lab2_fine_tune_peft.ipynb): the plumbing the notebook does not teach."""

# One module per step (README, Layout). What serves only the instructor, the benchmark and the offline world is in
# `backstage`, which none of them imports.

from .errors import LabError

__all__ = ["LabError"]
