"""Progress of an instructor stage: its plan, then seconds per step and when it will end.

On a terminal the Trainer's own bar shows the steps and its ETA; in a log (no terminal) this prints a line every
tenth of the stage instead. Either way the stage's plan comes first, and after the first steps one line says how
long a step takes on this machine and when the stage should end.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback


def clock(seconds_from_now: float) -> str:
    return time.strftime("%H:%M", time.localtime(time.time() + seconds_from_now))


class StageProgress(TrainerCallback):
    """Prints a stage's plan, its measured seconds per step with the expected end, and periodic lines in a log."""

    MEASURE_AFTER = 3  # steps: the first ones include warm-up work (allocations, the first batches)

    def __init__(self, label: str, batch: int, device: str, precision: str, terminal: bool):
        self.label, self.batch, self.device, self.precision, self.terminal = label, batch, device, precision, terminal
        self.first_step = self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        print(
            f"Training the {self.label}: {state.max_steps} steps (from step {state.global_step}), batch {self.batch}, "
            f"learning rate {args.learning_rate}, {self.device}, {self.precision}; a checkpoint every "
            f"{args.save_steps} steps, the validation loss every {args.eval_steps}",
            flush=True,
        )
        self.first_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self.first_step
        if done == 1:
            self.start = time.perf_counter()
        elif done > 1:
            per_step = (time.perf_counter() - self.start) / (done - 1)
            left = (state.max_steps - state.global_step) * per_step
            every = max(1, state.max_steps // 10)
            if done == self.MEASURE_AFTER or (not self.terminal and state.global_step % every == 0):
                print(
                    f"  {self.label}: step {state.global_step}/{state.max_steps}, {per_step:.2f} s/step, "
                    f"about {left / 60:.0f} min left (ends ~{clock(left)})",
                    flush=True,
                )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            print(f"  {self.label}: step {state.global_step}, validation loss {metrics['eval_loss']:.4f}", flush=True)
