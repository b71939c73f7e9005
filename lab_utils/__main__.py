"""Command line: `python -m lab_utils {settings,build-model,instructor}` (see README)."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab_utils", description=__doc__)
    parser.add_argument("--profile", choices=["course", "offline"], help="overrides LAB_PROFILE")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("settings", help="print the settings this environment gives")
    sub.add_parser("build-model", help="offline profile: build the tiny stand-in model (tokenizer + pretraining)")
    ins = sub.add_parser("instructor", help="train, evaluate the full test set, publish checkpoints + results to S3")
    ins.add_argument("--no-upload", action="store_true", help="keep the run on disk, do not publish it")
    ins.add_argument("--full-steps", type=int, help="training steps of the full fine-tune")
    ins.add_argument("--lora-steps", type=int, help="training steps of the LoRA adapter")
    args = parser.parse_args(argv)

    from .config import load_settings, show_banner

    try:
        overrides = {}
        if getattr(args, "full_steps", None):
            overrides["instructor_full_steps"] = args.full_steps
        if getattr(args, "lora_steps", None):
            overrides["instructor_lora_steps"] = args.lora_steps
        settings = load_settings(args.profile, **overrides)
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
            publish_run(settings, upload=not args.no_upload, progress=sys.stderr.isatty() or "CI" not in os.environ)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
