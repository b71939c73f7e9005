"""Command line of the lab: `python -m lab_utils {settings,run,build-model,instructor}` (see README)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import PROJECT_ROOT
from .errors import LabError

NOTEBOOK = PROJECT_ROOT / "lab2_fine_tune_peft.ipynb"
EXECUTED = PROJECT_ROOT / "data" / "executed" / NOTEBOOK.name


def run_notebook(parameters: dict[str, str], output: Path) -> int:
    """Execute the notebook with papermill (parameters parsed as Python literals where possible)."""
    import ast

    import papermill

    values = {}
    for name, raw in parameters.items():
        try:
            values[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values[name] = raw  # a bare word such as offline
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"Executing {NOTEBOOK.name} -> {output}" + (f" with {values}" if values else ""))
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(output),
        parameters=values,
        cwd=str(PROJECT_ROOT),
        kernel_name="python3",
        progress_bar=True,
        log_output=False,
    )
    print(f"Executed notebook: {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils", description=__doc__)
    parser.add_argument("--profile", choices=["course", "offline"], help="overrides LAB_PROFILE")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("settings", help="print the settings this environment gives")
    run = sub.add_parser("run", help="execute the notebook top to bottom (papermill), keeping the executed copy")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="override a variable of the notebook's parameters cell, e.g. -p FULL_STEPS 5",
    )
    run.add_argument("--output", default=str(EXECUTED), help="where the executed notebook goes")
    sub.add_parser("build-model", help="offline profile: build the tiny stand-in model (tokenizer + pretraining)")
    ins = sub.add_parser("instructor", help="train, evaluate the full test set, publish checkpoints + results to S3")
    ins.add_argument("--no-upload", action="store_true", help="keep the run on disk, do not publish it")
    ins.add_argument("--full-steps", type=int, help="training steps of the full fine-tune")
    ins.add_argument("--lora-steps", type=int, help="training steps of the LoRA adapter")
    ins.add_argument(
        "--fast-inference",
        choices=["fp32", "int8", "bf16"],
        default="fp32",
        help="generate the results file with int8 dynamic quantization or bf16 autocast (CPU)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["LAB_PROFILE"] = args.profile  # also reaches the notebook's kernel

    from .config import load_settings, show_banner

    try:
        overrides = {}
        if getattr(args, "full_steps", None):
            overrides["instructor_full_steps"] = args.full_steps
        if getattr(args, "lora_steps", None):
            overrides["instructor_lora_steps"] = args.lora_steps
        settings = load_settings(None, **overrides)
        if args.command == "run":
            return run_notebook(dict(args.parameter), Path(args.output))
        if args.command == "settings":
            settings.show()
        elif args.command == "build-model":
            from .models import ensure_offline_model

            if not settings.offline:
                raise LabError("build-model is for the offline profile", "run with --profile offline")
            print(ensure_offline_model(settings))
        elif args.command == "instructor":
            from .instructor import publish_run

            show_banner(settings)
            publish_run(
                settings,
                upload=not args.no_upload,
                fast_inference=args.fast_inference,
                progress=sys.stderr.isatty() or "CI" not in os.environ,
            )
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
