"""The course profile at Flan-T5's size: the learners' notebook, or the instructor's training (not part of CI)."""

#   .venv/bin/python tests/at_size.py notebook [--work DIR] [--max-new-tokens 50]     # ~6 minutes, ~10 GB
#   .venv/bin/python tests/at_size.py instructor [--work DIR] [--steps 5] [--every 2]  # ~15 min on 2 cores, ~14 GB
# On flan-t5-base's architecture (random weights: denormals flushed, generation capped) and the course's artifacts
# made from it, built once in `--work`; DialogSum from the offline profile's folder; no Hub. notebook: per-cell time
# and peak memory. instructor: s/step, peak memory, checkpoints' disk; SIGKILL after the first checkpoint, then a
# resume from it.

import argparse
import contextlib
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


def build_world(work: Path) -> dict[str, Path]:
    """The flan-t5-base-architecture original model and the course's artifacts made from it (kept for the next run)."""
    import torch
    from course_world import write_adapter_peft_0_3, write_course_results_file, write_full_checkpoint_4_27
    from peft import get_peft_model
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from lab_utils.backstage.instructor import lora_config
    from lab_utils.backstage.standin import FLAN_T5_BASE_CONFIG
    from lab_utils.checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE
    from lab_utils.config import RELEASE_DIR

    base, artifacts = work / "flan-t5-base-architecture", work / "course-artifacts"
    full, adapter = artifacts / FULL_CHECKPOINT, artifacts / PEFT_CHECKPOINT
    if not (base / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE_CONFIG))
        assert sum(p.numel() for p in model.parameters()) == 247_577_856
        model.save_pretrained(base)
        AutoTokenizer.from_pretrained(RELEASE_DIR / "flan-t5-tiny").save_pretrained(base)
    if not (full / "pytorch_model.bin").is_file():
        write_full_checkpoint_4_27(base, full)
    if not (adapter / "adapter_model.bin").is_file():
        peft = get_peft_model(T5ForConditionalGeneration.from_pretrained(base), lora_config())
        with torch.no_grad():  # B not zero: an adapter that changes the model
            for param in (p for n, p in peft.named_parameters() if "lora_B" in n):
                param.normal_(std=0.01)
        peft.save_pretrained(work / "adapter-safetensors")
        write_adapter_peft_0_3(work / "adapter-safetensors", adapter)
    results = {RESULTS_FILE: write_course_results_file(RELEASE_DIR / RESULTS_FILE, artifacts / RESULTS_FILE)}
    return {"base": base, FULL_CHECKPOINT: full, PEFT_CHECKPOINT: adapter, **results}


def watch(peaks: list[dict], pid, stop: threading.Event, trainers: Path | None = None, kill_at: Path | None = None):
    """A thread until `stop`: peak GB of `pid()`'s memory and `trainers/*.trainer`'s disk in `peaks[-1]`; SIGKILL."""

    def loop(kill_at=kill_at):
        while not stop.is_set():
            peak = peaks[-1] if peaks else {}
            with contextlib.suppress(OSError, TypeError):  # no process yet (pid None), or gone
                rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid()}/status").read_text())[1]) / 1024**2
                peak["rss"] = max(peak.get("rss", 0.0), rss)
            if trainers is not None:
                disk = sum(f.stat().st_size for f in trainers.glob("*.trainer/**/*") if f.is_file())
                peak["disk"] = max(peak.get("disk", 0.0), disk / 1e9)
            state = kill_at / "trainer_state.json" if kill_at else None  # a checkpoint's last file, written at once
            if state and state.is_file() and state.stat().st_size:
                os.kill(pid(), signal.SIGKILL)
                kill_at = None
            time.sleep(0.2)

    threading.Thread(target=loop, daemon=True).start()


def notebook(args, world: dict[str, Path], env: dict[str, str]) -> int:
    import nbformat
    from course_world import COURSE_PREFIX
    from nbclient import NotebookClient

    from lab_utils.backstage.local_s3 import LocalS3
    from lab_utils.s3 import push

    with LocalS3() as server:
        os.environ.update(server.env(), **env, LAB_ROUGE_METRIC=str(ROOT / "lab_utils" / "backstage" / "rouge_metric"))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        t0 = time.perf_counter()
        for name, path in list(world.items())[1:]:  # the course's artifacts
            push(path, COURSE_PREFIX + name + ("/" if path.is_dir() else ""))
        print(f"published to the local S3 server in {time.perf_counter() - t0:.0f} s", flush=True)
        nb = nbformat.read(ROOT / "lab2_fine_tune_peft.ipynb", as_version=4)
        client = NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
        cells, stop = [], threading.Event()  # each cell's id, start and peak memory; its time lasts to the next start
        client.on_cell_start = lambda cell, **_: cells.append({"id": cell.get("id"), "start": time.perf_counter()})
        watch(cells, lambda: getattr(getattr(client.km, "provisioner", None), "pid", None), stop)  # the kernel's
        t0 = time.perf_counter()
        try:
            client.execute()
        finally:
            stop.set()
            nbformat.write(nb, args.work / "executed-at-size.ipynb")
        cells.append({"start": time.perf_counter()})
    print("\n| cell | time | resident memory up to |\n|---|---|---|")
    for cell, after in zip(cells, cells[1:]):
        if after["start"] - cell["start"] >= 1.0 or cell.get("rss", 0.0) >= 4.0:
            print(f"| {cell['id']} | {after['start'] - cell['start']:.1f} s | {cell.get('rss', 0.0):.1f} GB |")
    top = max((cell.get("rss", 0.0) for cell in cells), default=0.0)
    print(f"\nwhole notebook: {cells[-1]['start'] - t0:.0f} s; peak {top:.1f} GB (executed copy: {args.work})")
    return 0


def run_command(command: list[str], env: dict, trainers: Path, kill_at: Path | None = None):
    """The command, its output echoed and kept, watched; returns its output, peaks, seconds and exit code."""
    out, peak, stop, t0 = [], {"rss": 0.0, "disk": 0.0}, threading.Event(), time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch([peak], lambda: proc.pid, stop, trainers, kill_at)
    for line in proc.stdout:
        out.append(line)
        print(line, end="", flush=True)
    proc.wait()
    stop.set()
    return "".join(out), peak, time.perf_counter() - t0, proc.returncode


def instructor(args, world: dict[str, Path], env: dict[str, str]) -> int:
    import pandas as pd

    from lab_utils.checkpoints import FULL_CHECKPOINT

    data, lab = args.work / "dialogsum-small", args.work / "instructor"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(env["LAB_DATA_DIR"]) / "train.csv", data / "train.csv")  # validation: 8 rows; test: 2 dialogues
    for split, rows in (("validation", 8), ("test", 6)):
        pd.read_csv(Path(env["LAB_DATA_DIR"]) / f"{split}.csv").head(rows).to_csv(data / f"{split}.csv", index=False)
    shutil.rmtree(lab, ignore_errors=True)
    run = lab / "course" / "instructor-run"  # instructor.run_dir: LAB_WORK_DIR / profile / instructor-run
    env = {**os.environ, **env, "LAB_DATA_DIR": str(data), "LAB_WORK_DIR": str(lab), "LAB_MAX_NEW_TOKENS": "32",
           "LAB_SAVE_STEPS": str(args.every), "LAB_EVAL_STEPS": str(args.every), "LAB_VALIDATION_ROWS": "8",
           "PYTHONPATH": env["IPYTHONDIR"], "CI": "1",  # sitecustomize flushes denormals; CI: a log, not a terminal
           **{f"LAB_INSTRUCTOR_{stage}_STEPS": str(args.steps) for stage in ("FULL", "LORA", "TOPIC")}}  # fmt: skip
    command = [sys.executable, "-m", "lab_utils", "instructor", "--no-upload"]
    first = run / f"{FULL_CHECKPOINT}.trainer" / f"checkpoint-{args.every}"
    out, peak, killed_at, _ = run_command(command, env, run, kill_at=first)
    print(f"\n== SIGKILL after {killed_at:.0f} s; {first.name} whole: {(first / 'trainer_state.json').is_file()}\n")
    out2, peak2, resumed_s, code = run_command(command, env, run)
    resumed = re.search(r"Resuming the (.*) stage from (checkpoint-\d+)", out2)
    per_step = dict(re.findall(r"  (.*): step \d+/\d+, ([\d.]+) s/step", out + out2))  # a stage's last line
    print(f"\n| what | measured |\n|---|---|\n| resumed | {resumed.group(0) if resumed else 'NO'} |")
    for stage in ("full", "lora", "topic"):  # Progress prints after 3 steps from the start or the resume point
        print(f"| {stage}: s/step | {f'{float(per_step[stage]):.1f}' if stage in per_step else 'no line'} |")
    print(f"| peak resident memory (killed run, resumed run) | {peak['rss']:.1f} GB, {peak2['rss']:.1f} GB |")
    print(f"| checkpoints on disk at most | {max(peak['disk'], peak2['disk']):.1f} GB |")
    print(f"| time to the kill; the resumed command to the end | {killed_at:.0f} s; {resumed_s:.0f} s |")
    print(f"| exit code of the resumed command | {code} |")
    return 0 if resumed and resumed.group(1) == "full" and code == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name, options in (("notebook", {"--max-new-tokens": 50}), ("instructor", {"--steps": 5, "--every": 2})):
        cmd = sub.add_parser(name)
        for option, default in {"--work": ROOT / "data" / "at-size", **options}.items():
            cmd.add_argument(option, type=type(default), default=default, help=f"default: {default}")
    args = parser.parse_args()
    from lab_utils.config import OFFLINE

    t0, world = time.perf_counter(), build_world(args.work)
    print(f"world built in {time.perf_counter() - t0:.0f} s", flush=True)
    flush = Path(tempfile.mkdtemp())  # the kernel runs IPython's startup files; the instructor's Python, sitecustomize
    for script in (flush / "profile_default" / "startup" / "00-flush-denormals.py", flush / "sitecustomize.py"):
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("import torch\ntorch.set_flush_denormal(True)\n")
    env = {"LAB_PROFILE": "course", "LAB_MODEL_ID": str(world["base"]), "LAB_WORK_DIR": str(args.work / "lab"),
           "LAB_DATA_DIR": str((ROOT / OFFLINE["data_dir"]).resolve()), "IPYTHONDIR": str(flush),
           "LAB_MAX_NEW_TOKENS": str(getattr(args, "max_new_tokens", 0)), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    return (notebook if args.what == "notebook" else instructor)(args, world, env)


if __name__ == "__main__":
    sys.exit(main())
