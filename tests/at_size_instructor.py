"""The instructor's training at Flan-T5's size: s/step, peak memory, checkpoint disk, and a SIGKILL then resume.

    .venv/bin/python tests/at_size_instructor.py [--work DIR] [--steps 4] [--every 2]

Not part of CI (~15 minutes on 2 cores, ~14 GB). The course profile's recipe (batch 8, 512-token prompts, fp32 on a
CPU; whatever `LAB_PRECISION` resolves to on a GPU) on the flan-t5-base architecture with random weights (built by
tests/at_size_notebook.py's `build_world`; denormals flushed in the instructor's process through `sitecustomize`),
DialogSum's training split, 8 validation rows and 2 test dialogues (the results stage generates 32 new tokens).
Each stage trains `--steps` steps with a checkpoint and a validation loss every `--every`; the full fine-tune is
killed with SIGKILL once its first checkpoint is complete, then the command is run again and must resume from it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def small_dialogsum(folder: Path) -> Path:
    """DialogSum's training split, its first 8 validation rows and first 2 test dialogues (6 rows)."""
    import pandas as pd

    from lab_utils.config import load_settings

    source = load_settings("offline", environ={}).path("../shared/dialogsum")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "train.csv", folder / "train.csv")
    pd.read_csv(source / "validation.csv").head(8).to_csv(folder / "validation.csv", index=False)
    pd.read_csv(source / "test.csv").head(6).to_csv(folder / "test.csv", index=False)
    return folder


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def watch(proc: subprocess.Popen, run: Path, out: list[str], peak: dict) -> None:
    """Sample the process's memory and the checkpoints' disk use while it runs; collect its output."""

    def sample():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024**2
                peak["rss_gb"] = max(peak.get("rss_gb", 0.0), rss)
            except (OSError, StopIteration):
                pass
            disk = sum(tree_size(p) for p in run.glob("*.trainer"))
            peak["checkpoints_gb"] = max(peak.get("checkpoints_gb", 0.0), disk / 1e9)
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    for line in proc.stdout:
        out.append(line)
        print(line, end="", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "data" / "at-size"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--every", type=int, default=2)
    args = parser.parse_args()
    from at_size_notebook import build_world

    work = Path(args.work)
    base = build_world(work)["base"]
    data = small_dialogsum(work / "dialogsum-small")
    site = Path(tempfile.mkdtemp())
    (site / "sitecustomize.py").write_text("import torch\ntorch.set_flush_denormal(True)\n")
    lab = work / "instructor"
    shutil.rmtree(lab, ignore_errors=True)
    run = lab / "course" / "instructor-run"
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "LAB_PROFILE": "course",
        "LAB_MODEL_ID": str(base),
        "LAB_DATA_DIR": str(data),
        "LAB_WORK_DIR": str(lab),
        "LAB_INSTRUCTOR_FULL_STEPS": str(args.steps),
        "LAB_INSTRUCTOR_LORA_STEPS": str(args.steps),
        "LAB_INSTRUCTOR_TOPIC_STEPS": str(args.steps),
        "LAB_SAVE_STEPS": str(args.every),
        "LAB_EVAL_STEPS": str(args.every),
        "LAB_VALIDATION_ROWS": "8",
        "LAB_MAX_NEW_TOKENS": "32",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CI": "1",  # a log, not a terminal: a progress line at every step
    }
    command = [sys.executable, "-m", "lab_utils", "instructor", "--no-upload"]
    first = run / "flan-dialogue-summary-checkpoint.trainer" / f"checkpoint-{args.every}"
    out, peak = [], {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=watch, args=(proc, run, out, peak), daemon=True)
    reader.start()
    while not (first / "trainer_state.json").is_file() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(timeout=5)
    killed_at = time.perf_counter() - t0
    print(f"\n== killed with SIGKILL after {killed_at:.0f} s, {first.name} complete\n", flush=True)
    out2, peak2 = [], {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch(proc, run, out2, peak2)
    proc.wait()
    resumed_s = time.perf_counter() - t0
    text = "".join(out2)
    resumed = re.search(r"Resuming the (.*) stage from (checkpoint-\d+)", text)
    per_step = re.findall(r"  (.*): step \d+/\d+, ([\d.]+) s/step", "".join(out) + text)
    print("\n| what | measured |\n|---|---|")
    print(f"| resumed | {resumed.group(0) if resumed else 'NO'} |")
    for label, seconds in dict(per_step).items():
        print(f"| {label}: s/step | {float(seconds):.1f} |")
    print(f"| peak resident memory (killed run, resumed run) | {peak['rss_gb']:.1f} GB, {peak2['rss_gb']:.1f} GB |")
    print(f"| checkpoints on disk at most | {max(peak['checkpoints_gb'], peak2['checkpoints_gb']):.1f} GB |")
    print(f"| time to the kill; the resumed command to the end | {killed_at:.0f} s; {resumed_s:.0f} s |")
    print(f"| exit code of the resumed command | {proc.returncode} |")
    return 0 if resumed and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
