"""Command line of the lab: `python -m lab_utils COMMAND` (`--help` lists the commands; see the README)."""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
from pathlib import Path

from .backstage.summarize_cli import summarize_command
from .config import PROJECT_ROOT, RELEASE_DIR, load_settings, show_banner
from .engines import ENGINES
from .errors import LabError, disk_error
from .files import check_output, write_file

NOTEBOOK = PROJECT_ROOT / "lab2_fine_tune_peft.ipynb"
EXECUTED = PROJECT_ROOT / "data" / "executed" / NOTEBOOK.name


def failed_cell(executed: Path, exc) -> tuple[str, str, str]:
    """(cell id, error name, message) of the cell a papermill run stopped in."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    cell = next((c for c in cells if c.get("execution_count") == exc.exec_count), {})
    for out in cell.get("outputs", []):  # a LabError shows as its message alone (errors.install_notebook_handler)
        if out.get("text", "").startswith("LabError: "):
            return cell.get("id", "?"), "LabError", out["text"].removeprefix("LabError: ").rstrip()
    return cell.get("id", "?"), exc.ename, exc.evalue


def literal(text: str):
    """A Python literal (5, 2.5, None), or the text itself (a bare word such as offline)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_notebook(parameters: dict[str, str], output: Path) -> int:
    """Execute the notebook with papermill into `output` (whole, with every output up to a failing cell)."""
    # parameters are Python literals where they parse, and checked before the kernel starts; a failing cell is named
    # with its error (a LabError's message as it is: exit 2), not papermill's trace
    import papermill
    from papermill.exceptions import PapermillExecutionError

    known = papermill.inspect_notebook(str(NOTEBOOK))
    if unknown := sorted(set(parameters) - set(known)):
        raise LabError(f"the notebook has no parameter {', '.join(unknown)}",
                       f"use one of {', '.join(known)} (its parameters cell), e.g. -p FULL_STEPS 5")  # fmt: skip
    values = {name: literal(raw) for name, raw in parameters.items()}
    settings = {"FULL_STEPS": "notebook_full_steps", "LORA_STEPS": "notebook_lora_steps",
                "EVAL_DIALOGUES": "eval_dialogues"}  # fmt: skip
    rank, profile = values.get("LORA_RANK", 32), values.get("PROFILE")
    if type(rank) is not int or rank < 1 or not isinstance(profile, str | None):
        raise LabError(f"-p LORA_RANK {rank!r} / -p PROFILE {profile!r}: a rank is a whole number of at least 1, a "
                       "profile course or offline", "e.g. -p LORA_RANK 32 -p PROFILE offline")  # fmt: skip
    load_settings(profile, **{settings[k]: v for k, v in values.items() if k in settings and v is not None})
    print(f"Executing {NOTEBOOK.name} -> {output}" + (f" with {values}" if values else ""))
    failure = None
    with write_file(output) as tmp:
        try:
            papermill.execute_notebook(str(NOTEBOOK), str(tmp), parameters=values, cwd=str(PROJECT_ROOT),
                                       progress_bar=sys.stderr.isatty())  # fmt: skip
        except PapermillExecutionError as exc:
            failure = exc, failed_cell(tmp, exc)
    if failure:
        exc, (cell, ename, evalue) = failure
        print(f"error: the notebook stopped in cell {cell!r} (In [{exc.exec_count}]): {ename}: {evalue}\n"
              f"  (the executed copy, with every output up to there: {output})", file=sys.stderr)  # fmt: skip
        return 2 if ename == "LabError" else 1
    print(f"Executed notebook: {output}")
    return 0


def number(kind, least: float, what: str):
    """An argparse type: a finite `kind` of at least `least` (0 steps is refused, never taken as 'not given')."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from exc
        if not math.isfinite(value) or value < least:
            raise argparse.ArgumentTypeError(f"{text}: give a finite {what} of at least {least}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab_utils", description=__doc__)
    p.add_argument("--profile", choices=["course", "offline"], help="overrides LAB_PROFILE")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("settings", help="print every setting: its value here and what it means")
    run = sub.add_parser("run", help="execute the notebook top to bottom (papermill), keeping the executed copy")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a variable of the notebook's parameters cell, e.g. -p FULL_STEPS 5")  # fmt: skip
    run.add_argument("--output", default=str(EXECUTED), help="where the executed notebook goes")
    build = sub.add_parser("build-model", help="offline: train the stand-in's tokenizer and pretrain it")
    build.add_argument("--out", default=str(PROJECT_ROOT / "data/offline/flan-t5-tiny"), help="a new folder")
    ins = sub.add_parser("instructor", help="train, summarize the full test set, publish to LAB_S3_URI")
    ins.add_argument("--no-upload", action="store_true", help="keep the run on disk, do not publish it")
    for stage in ("full", "lora", "topic"):
        ins.add_argument(f"--{stage}-steps", type=number(int, 1, "whole number"), help=f"steps of the {stage} stage")
    ins.add_argument("--fast-inference", choices=ENGINES, default="pytorch", help="what generates the results files")
    rel = sub.add_parser("release", help="offline: copy the stand-in and the finished instructor run into a release")
    rel.add_argument("--made-by", default="", help="the commands that made the run, recorded in the manifest")
    rel.add_argument("--build-seconds", type=number(float, 0, "number"), help="how long build-model took")
    where = rel.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", help="write the release into this new folder")
    where.add_argument("--replace-committed", action="store_true", help="replace lab_utils/backstage/release")
    summ = sub.add_parser("summarize", help="summarize dialogues with the original model, an adapter or a merged model")
    which = summ.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="a LoRA adapter folder, loaded onto the original model (LAB_MODEL_ID)")
    which.add_argument("--merged", help="a full model folder (a merged adapter, the instruct model)")
    summ.add_argument("input", nargs="?", default="-", help="a text file (a blank line between dialogues), a CSV, or -")
    summ.add_argument("--column", help="the CSV column holding the dialogues (default: dialogue)")
    summ.add_argument("--encoding", help="the input's encoding, e.g. cp1252 (default: UTF-8, or its byte-order mark)")
    summ.add_argument("--output", help="write a CSV (dialogue, summary) here instead of printing")
    summ.add_argument("--engine", choices=ENGINES, default="pytorch", help="PyTorch, or CTranslate2 (converted once)")
    sub.add_parser("bench", add_help=False, help="the benchmark: where time and memory go (bench --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args, extra = cli.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and args.command != "bench":  # the benchmark has its own options
        cli.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.profile:
        os.environ["LAB_PROFILE"] = args.profile  # also reaches the notebook's kernel
    if args.command == "bench":
        from .backstage.bench import main as bench_main

        return bench_main(extra)
    try:
        steps = {f"instructor_{s}_steps": getattr(args, f"{s}_steps", None) for s in ("full", "lora", "topic")}
        settings = load_settings(None, **{k: v for k, v in steps.items() if v})  # checked here, before any work
        if args.command in ("build-model", "release") and not settings.offline:
            raise LabError(f"{args.command} is for the offline profile", "run with --profile offline")
        if args.command == "run":
            output = check_output(args.output, "the executed notebook (--output)", inputs=[NOTEBOOK])
            return run_notebook(dict(args.parameter), output)
        if args.command == "settings":
            settings.show(everything=True)
        elif args.command == "build-model":
            from .backstage.standin import build_standin

            print(build_standin(settings, args.out))
        elif args.command == "instructor":
            from .backstage.instructor import run_instructor

            show_banner(settings)
            progress = sys.stderr.isatty() or "CI" not in os.environ
            run_instructor(settings, upload=not args.no_upload, fast_inference=args.fast_inference, progress=progress)
        elif args.command == "release":
            from .backstage.release import make_release, verify_release

            committed = RELEASE_DIR if args.replace_committed else None  # replaced only when asked for
            dest = check_output(args.to or RELEASE_DIR, "the release folder", folder=True, allowed=committed)
            make_release(settings, args.made_by, args.build_seconds, dest)
            verify_release(dest)
        elif args.command == "summarize":
            summarize_command(settings, args)
    except (LabError, OSError) as exc:  # a disk that refuses a write: one message too; any other OSError is a bug
        where, fix = getattr(exc, "filename", None) or "the work folder", "or point `LAB_WORK_DIR` at another folder"
        if (error := exc if isinstance(exc, LabError) else disk_error(exc, where, fix)) is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
