"""Helpers of the Flan-T5 fine-tuning lab (lab2_fine_tune_peft.ipynb): the plumbing the notebook does not teach.

One module per step of the story: `config` (settings, profiles, banner), `data` (DialogSum, the prompt), `models`
(parameter counts, fingerprint, checkpoint checks), `checkpoints` (pulling from S3), `evaluation` (batched generation,
ROUGE, the results file), `plots` (the pictures), `serving` (one base model, several adapters), `errors` (one
message per fixable problem). What serves only the
instructor command, the benchmark and the offline world is in `backstage`.
"""

from .errors import LabError

__all__ = ["LabError"]
