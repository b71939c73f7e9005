"""The notebook as a learner runs it: JupyterLab in headless Chromium, Run All, then what the learner saw is checked.

Usage: python tests/in_jupyterlab.py [--timeout SECONDS]. Keeps data/executed/lab2_fine_tune_peft.ipynb (the saved
notebook, which nbval then replays) and data/executed/screenshots/ (one PNG per heading). Fails (exit 1) on a cell not
executed, an error output, a stderr output that is not a progress bar, a widget that does not display, a figure that
is not an image. Needs Debian's chromium and chromium-driver (tests/run_all.sh installs them).
"""

# The kernel inherits this process's environment (LAB_PROFILE, LAB_EVAL_DIALOGUES ...). The notebook runs as a copy
# under a unique name beside the original, so its relative paths hold and the committed notebook is not changed.

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lab_utils.__main__ import EXECUTED, NOTEBOOK  # noqa: E402
from lab_utils.files import write_file, write_folder  # noqa: E402

SHOTS = EXECUTED.parent / "screenshots"
# tqdm's text bar ("Map: 100%|####| 12/12 [00:00<00:00, 99 examples/s]", "12it [00:01, 9.00it/s, loss=1]"), as a
# library without widgets prints it: the bracket must be tqdm's (elapsed, then <remaining or nothing, then ", rate"), so
# that a message ending in "3 rows [0, 1, 2]" or "2 keys [00:00 listed]" is a stderr problem, not a bar
PROGRESS = re.compile(
    r"^.*(\d+%\|.*\|\s*\d+/\d+|\d+(it| \w+))\s*"  # the bar and count, or the count alone
    r"\[(\d+:)?\d\d:\d\d(<((\d+:)?\d\d:\d\d|\?))?, [^\]]*\]\s*$"  # [elapsed<remaining, rate]
)
# how the notebook's handler (errors.install_notebook_handler) shows a LabError: printed, no error output
LAB_ERROR = re.compile(r"^LabError: ", re.M)
STATE = """const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext.session) return null;
const cells = panel.content.widgets;
const kernel = panel.sessionContext.session.kernel || {};
if (!window.labKernelDied) {  // a kernel that dies is restarted under the same id: its status changes tell
  window.labKernelDied = [false];
  panel.sessionContext.statusChanged.connect((_, status) => {
    if (['dead', 'restarting', 'autorestarting'].includes(status)) window.labKernelDied[0] = true; });
}
return {kernel: kernel.status, died: window.labKernelDied[0],
        cells: cells.map(c => ({type: c.model.type, id: c.model.id, count: c.model.executionCount,
                                prompt: (c.node.querySelector('.jp-InputPrompt') || {}).textContent || ''}))};"""
SCROLL = """const [index, done] = arguments; const nb = window.jupyterapp.shell.currentWidget.content;
nb.activeCellIndex = index;
Promise.resolve(nb.scrollToItem(index, 'start')).then(() => setTimeout(() => done(true), 400));"""
RENDERED = """const node = window.jupyterapp.shell.currentWidget.content.widgets[arguments[0]].node;
return {widgets: node.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
        images: [...node.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.naturalWidth > 0).length,
        text: (node.querySelector('.jp-Cell-outputWrapper') || {}).innerText || ''};"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jupyterlab(url: str, token: str, home: Path, log) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1 with the app exposed to scripts, and its settings in a folder of its own."""
    settings = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news prompt over the screenshots
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}  # fmt: skip
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={url.rsplit(':', 1)[1]}", "--ip=127.0.0.1",
               f"--ServerApp.token={token}", "--expose-app-in-browser", f"--ServerApp.root_dir={ROOT}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"JupyterLab exited ({server.returncode}); its log:\n{log_tail(log)}") from None
            time.sleep(0.5)
    server.terminate()
    server.wait(30)
    raise SystemExit(f"JupyterLab did not answer at {url} within 60 s; its log:\n{log_tail(log)}")


def log_tail(log) -> str:
    """The end of JupyterLab's log (its folder goes when this script exits: the text goes in the message)."""
    log.flush()
    return Path(log.name).read_text(errors="replace")[-4000:]


def chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # headless as root in a container; no background calls to Google's hosts (the network is closed here)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1600", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_script_timeout(60)
    return driver


def wait_for(driver, what: str, seconds: float, condition):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {seconds:.0f} s waiting for {what}")


def run_all(driver, timeout: float) -> dict:
    """Run All, printing which cell runs, until the kernel is idle and no prompt shows [*]."""
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    start, last, quiet = time.time(), None, 0
    while time.time() - start < timeout:
        time.sleep(2)
        state = driver.execute_script(STATE)
        code = [c for c in state["cells"] if c["type"] == "code"]
        running = [i for i, c in enumerate(code) if "*" in c["prompt"]]
        quiet = quiet + 1 if not running and state["kernel"] == "idle" else 0
        if quiet >= 2:
            return state
        now = code[running[0]]["id"] if running else None
        if now != last:
            done = sum(c["count"] is not None for c in code)
            print(f"  {time.time() - start:5.0f} s  {done}/{len(code)} cells run, now: {now}", flush=True)
            last = now
    raise SystemExit(f"Run All did not finish within {timeout:.0f} s")


def stderr_problems(cell: dict) -> list[str]:
    """Each stderr output of a cell that is not a progress bar (a pink box a learner would read)."""
    problems = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream" and out["name"] == "stderr":
            lines = [line for line in re.split(r"[\r\n]+", "".join(out["text"])) if line.strip()]
            problems += [line for line in lines if not PROGRESS.match(line)]
    return problems


def check(driver, notebook: dict, state: dict) -> list[str]:
    """What the learner saw, cell by cell: executed, no error, no stray stderr, widgets shown, figures as images."""
    failures, index = [], {c["id"]: i for i, c in enumerate(state["cells"])}
    if state["died"]:  # in the first cell without an execution count: the one that was running
        code = [c["id"] for c in state["cells"] if c["type"] == "code"]
        cell = next((c["id"] for c in state["cells"] if c["type"] == "code" and c["count"] is None), code[-1])
        failures.append(f"{cell}: the kernel died while it ran (out of memory?); the cells after it did not run")
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        name, outputs = cell["id"], cell.get("outputs", [])
        if cell.get("execution_count") is None:
            failures.append(f"{name}: not executed")
        failures += [f"{name}: {o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
        failures += [f"{name}: stderr: {line[:200]}" for line in stderr_problems(cell)]
        printed = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
        failures += [f"{name}: {line[:200]}" for line in printed.splitlines() if LAB_ERROR.match(line)]
        widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
        figure = "figure" in cell.get("metadata", {}).get("tags", [])
        if not widgets and not figure:
            continue
        driver.execute_async_script(SCROLL, index[name])
        seen = driver.execute_script(RENDERED, index[name])
        if "Error displaying widget" in seen["text"] or "Loading widget" in seen["text"]:
            failures.append(f"{name}: a widget did not display: {seen['text'][:200]!r}")
        elif seen["widgets"] < widgets:
            failures.append(f"{name}: {widgets} widget outputs, {seen['widgets']} displayed")
        images = sum("image/png" in o.get("data", {}) for o in outputs)
        if figure and (images != 1 or seen["images"] != 1):
            failures.append(f"{name}: a figure cell shows {seen['images']} images ({images} PNG outputs)")
    return failures


def screenshots(driver, notebook: dict, folder: Path) -> int:
    """One screenshot per heading, scrolled to the top of the window; `folder` replaced whole (files.write_folder)."""
    shots = 0
    with write_folder(folder) as tmp:
        for i, cell in enumerate(notebook["cells"]):
            heading = cell["cell_type"] == "markdown" and re.search(r"^#+ (.+)$", "".join(cell["source"]), re.M)
            if heading:
                driver.execute_async_script(SCROLL, i)
                shots += 1
                slug = re.sub(r"[^a-z0-9]+", "-", heading.group(1).lower()).strip("-")[:50]
                driver.save_screenshot(str(tmp / f"{shots:02d}-{slug}.png"))
    return shots


CANARY = [  # (cell source, tags, what check() must say of it): the checks themselves are tested on every run
    ('import warnings\n\nwarnings.warn("a warning box")', [], "stderr: "),
    ("from tqdm.auto import tqdm\n\nfor _ in tqdm(range(3)):\n    pass", [], None),
    ('import sys\n\nprint("Map: 100%|##########| 3/3 [00:00<00:00, 9.00 examples/s]", file=sys.stderr)', [], None),
    ('print("no picture")', ["figure"], "a figure cell shows 0 images"),
    ('display({"application/vnd.jupyter.widget-view+json": {"model_id": "gone", "version_major": 2,'
     ' "version_minor": 0}}, raw=True)', [], "a widget did not display"),
    ('import sys\n\nprint("WARNING: dropped 3 rows [0, 1, 2]", file=sys.stderr)', [], "stderr: "),
    ('print("Loaded 2 keys [00:00 listed below]", file=__import__("sys").stderr)', [], "stderr: "),
    ('import sys\n\nprint("12it [00:01, 9.00it/s, loss=1.2]", file=sys.stderr)', [], None),
    # a LabError shows as printed text alone (no error output): shown as a raised one is, without stopping Run All
    ('from lab_utils.errors import LabError, install_notebook_handler\n\ninstall_notebook_handler()\n'
     'get_ipython().CustomTB(LabError, LabError("a lab error", "fix it"), None)', [], "LabError: a lab error"),
    ("1 / 0", [], "ZeroDivisionError"),
    ('print("after the error")', [], "not executed"),
]  # fmt: skip
DEATH = [("import os\n\nos._exit(1)", [], "the kernel died")]  # JupyterLab restarts it: Run All ends there


def learner_run(driver, url: str, path: Path, timeout: float) -> tuple[dict, dict]:
    """Open `path` (`url` formats its name) in JupyterLab, Run All, save it: the saved notebook, the page's state."""
    driver.get(url.format(path.name))
    wait_for(driver, "the kernel", 120, lambda: (driver.execute_script(STATE) or {}).get("kernel") == "idle")
    state = run_all(driver, timeout)
    saved = driver.execute_async_script(
        "const done = arguments[0]; window.jupyterapp.commands.execute('docmanager:save')"
        ".then(() => done(true), e => done(String(e)));"
    )
    if saved is not True:
        raise SystemExit(f"saving {path.name} in JupyterLab failed: {saved}")
    return json.loads(path.read_text(encoding="utf-8")), state


def canary(driver, url: str, path: Path, flaws: list) -> list[str]:
    """Run a notebook with one flaw per cell; each flaw check() misses (or a sound cell it flags) is a failure."""
    import nbformat

    cells = [nbformat.v4.new_code_cell(source, metadata={"tags": tags}, id=f"canary-{i}")
             for i, (source, tags, _) in enumerate(flaws)]  # fmt: skip
    kernel = {"kernelspec": json.loads(NOTEBOOK.read_text(encoding="utf-8"))["metadata"]["kernelspec"]}  # the lab's
    path.write_text(nbformat.writes(nbformat.v4.new_notebook(cells=cells, metadata=kernel)), encoding="utf-8")
    notebook, state = learner_run(driver, url, path, 120)
    found = check(driver, notebook, state)
    driver.execute_script("window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    missed = []
    for i, (_, _, expected) in enumerate(flaws):
        said = [f for f in found if f.startswith(f"canary-{i}: ")]
        if (expected is None and said) or (expected and not any(expected in f for f in said)):
            missed.append(f"the check itself: on {flaws[i][0]!r} it said {said or 'nothing'}, expected {expected}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds Run All may take")
    args = parser.parse_args()
    # a CI timeout (SIGTERM) ends this script through its cleanup: no JupyterLab, kernel or notebook copy left behind
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started, t0 = datetime.now(timezone.utc), time.time()
    with tempfile.TemporaryDirectory(prefix="lab-jupyterlab-") as home:
        home = Path(home)
        copies = []
        for _ in range(2):  # the canary and the lab's notebook, under unique names beside the notebook
            fd, name = tempfile.mkstemp(dir=ROOT, prefix="lab2-in-jupyterlab-", suffix=".ipynb")
            os.close(fd)
            copies.append(Path(name))
        copies[1].write_bytes(NOTEBOOK.read_bytes())
        base, token, server, driver = f"http://127.0.0.1:{free_port()}", secrets.token_hex(16), None, None
        url = base + "/lab/tree/{}?reset&token=" + token  # ?reset: a fresh workspace, only this notebook open
        try:
            with open(home / "jupyterlab.log", "w") as log:
                server = start_jupyterlab(base, token, home, log)
                driver = chromium(home / "chromium")
                print(f"JupyterLab in Chromium {driver.capabilities['browserVersion']}, headless", flush=True)
                failures = canary(driver, url, copies[0], CANARY) + canary(driver, url, copies[0], DEATH)
                copies[0].unlink()  # not listed beside the lab's notebook in the screenshots
                print(f"Run All of {NOTEBOOK.name} (as {copies[1].name})", flush=True)
                notebook, state = learner_run(driver, url, copies[1], args.timeout)
                failures += check(driver, notebook, state)
                shots = screenshots(driver, notebook, SHOTS)
                browser = driver.capabilities["browserVersion"]
        finally:
            if driver:
                driver.quit()
            if server:
                server.terminate()
                server.wait(30)
            for copy in copies:
                copy.unlink(missing_ok=True)
                (ROOT / ".ipynb_checkpoints" / f"{copy.stem}-checkpoint.ipynb").unlink(missing_ok=True)
    notebook["metadata"]["lab_run"] = {"runner": f"JupyterLab in headless Chromium {browser}, Run All",
                                       "start_time": started.isoformat()}  # fmt: skip
    with write_file(EXECUTED) as tmp:
        tmp.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"Saved {EXECUTED.relative_to(ROOT)} and {shots} screenshots in {SHOTS.relative_to(ROOT)}/ "
          f"({time.time() - t0:.0f} s)")  # fmt: skip
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
