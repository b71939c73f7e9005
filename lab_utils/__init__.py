"""Helpers of the Flan-T5 fine-tuning lab (lab2_fine_tune_peft.ipynb): the plumbing the notebook does not teach.

One module per step of the story: `config` (settings, profiles, banner), `data` (DialogSum, the prompt), `models`
(parameter counts, fingerprint, checkpoint checks), `checkpoints` (what is pulled from S3, through `s3`),
`generation` (`summarize`), `scoring` (ROUGE and the story checks), `results_file`, `plots` (the pictures), `serving`
(one base model, several adapters), `isolated` (measuring in a fresh process), `outputs` (where commands may write),
`errors` (one message per fixable problem). What serves only the instructor command, the benchmark and the offline
world is in `backstage`, which none of these imports.
"""

from .errors import LabError

__all__ = ["LabError"]
