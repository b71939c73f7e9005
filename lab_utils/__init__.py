"""Helpers for the Flan-T5 fine-tuning lab (lab2_fine_tune_peft.ipynb), one module per stage of the story:
`config` (settings, profiles), `data` (DialogSum, prompt, tokenization), `models` (loading, parameter report,
LoRA), `training` (Trainer), `checkpoints` (S3), `evaluation` (generation, ROUGE, results file),
`offline` (the tiny stand-in model), `instructor` (the offline-trained checkpoints and results file).
"""

from .errors import LabError

__all__ = ["LabError"]
