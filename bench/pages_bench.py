"""Dashboard speed with 20 runs in the registry: how long each page takes to render, and how
soon a metric written by a running trainer shows on the Live page. Prints the figures.

    .venv/bin/python bench/pages_bench.py [--repeats 5] [--samples 10] [--no-browser]
    .venv/bin/python bench/pages_bench.py --first-opens [--repeats 5]
    .venv/bin/python bench/pages_bench.py --server [--seconds 60] [--watchers config auto]

``--first-opens`` prints the README's page-time table: for each page, a server started for it
alone, the page opened first (the libraries it needs load then), then opened again ``--repeats``
times, each a new session; and the CPU seconds of the page's first script run in a fresh process,
the server's share, which other work on the machine changes less than the wall times.

Two measures of a page: the server's script run (AppTest, warm) and what a user waits for in
headless Chromium against ``streamlit run`` (navigation until the script has finished and every
chart and image is drawn; the first visit, which imports the libraries, is shown apart). The registry is
one real tiny run (so Classify has a model) and 19 synthetic ones of 30 epochs each.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from appserver import start_app, stop_app  # noqa: E402
from retino_core import runs  # noqa: E402
from retino_core.training import launch  # noqa: E402

# Each page and the charts it draws with this registry.
PAGES = {"overview": 1, "train": 0, "live": 2, "results": 1, "classify": 0, "compare": 3, "evaluation": 2}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LIVE_STEPS = 1000


def make_registry(runs_dir: Path) -> Path:
    """20 runs: 1 real, 16 done, 1 running (this process), 1 queued, 1 failed. Returns the running one."""
    from app_fixtures import write_run  # here, not at the top: --page-cpu's child must not preload what it times

    subprocess.run([sys.executable, "-m", "retino_core", "train", "--data", "retinamnist", "--epochs", "1",
                    "--image-size", "32", "--batch-size", "16", "--max-steps-per-epoch", "3", "--num-workers", "0",
                    "--runs-dir", str(runs_dir), "--name", "bench-real", "--quiet"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    four = [("resnet18", True), ("resnet50", True), ("resnet18", False), ("resnet50", False)]
    for i in range(16):
        arch, pretrained = four[i % 4]
        write_run(runs_dir, arch, pretrained, epochs=30, steps=17, rows_per_epoch=8, seed=i,
                  skill=0.0 if i % 7 == 3 else 1.0 + 0.5 * pretrained)
    write_run(runs_dir, "resnet50", True, state="queued", epochs=30)
    write_run(runs_dir, "resnet50", False, state="failed", epochs=30)
    running = write_run(runs_dir, "resnet18", True, state="running", epochs=30, steps=17, rows_per_epoch=8)
    runs.write_status(running, "running", pid=os.getpid(), heartbeat_ts=time.time())
    assert len(runs.list_runs(runs_dir)) == 20
    return running


def keep_alive(run_dir: Path, stop: threading.Event) -> None:
    """Refresh the heartbeat as a trainer does, so the running run never reads as dead."""
    while not stop.wait(5.0):
        runs.write_status(run_dir, "running", heartbeat_ts=time.time())


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f} s  max {max(times):.2f} s  (n={len(times)})"


def bench_apptest(repeats: int) -> dict[str, list[float]]:
    from streamlit.testing.v1 import AppTest

    out = {}
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300).run()
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()  # warm-up: imports, caches
        assert not at.exception, at.exception[0].value
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t0)
        out[page] = times
    at.switch_page("pages/classify.py").run()
    at.checkbox[0].check().run()  # the bundled sample: load the model, grade, Grad-CAM
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
    # The registry's real run trained 3 steps: the page grades the photo and says it is no answer.
    assert not at.exception and "None of the chosen models is usable" in at.error[0].value
    out["classify + sample photo"] = times
    return out


# Rendered: the script has finished, and every chart and image on the page is drawn.
RENDERED = """(charts_expected) => {
  const app = document.querySelector('[data-test-script-state]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning' || !document.querySelector('h1')) return false;
  const charts = [...document.querySelectorAll('.stPlotlyChart')];
  const images = [...document.querySelectorAll('[data-testid=stMain] img')];
  return charts.length >= charts_expected && charts.every(c => c.querySelector('.main-svg'))
    && images.every(i => i.complete);
}"""


def page_load(page, url: str, charts: int) -> float:
    """Seconds from navigation until the page is rendered (see RENDERED)."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(RENDERED, arg=charts, polling=20, timeout=60_000)
    return time.perf_counter() - t0


def bench_browser(runs_dir: Path, running: Path, repeats: int, samples: int, log: Path):
    from playwright.sync_api import sync_playwright

    log_file = open(log, "wb")
    server, url = start_app(runs_dir, log_file, 90)
    loads: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    latencies: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name, charts in PAGES.items():
                target = url if name == "overview" else f"{url}/{name}"
                first[name] = page_load(page, target, charts)
                loads[name] = [page_load(page, target, charts) for _ in range(repeats)]

            # Latency: append a step row as the trainer does, wait until the Live page shows it.
            page_load(page, f"{url}/live", PAGES["live"])
            epoch = 16
            for k in range(1, samples + 1):
                time.sleep(random.uniform(0.3, 1.3))  # land anywhere in the 1 s polling cycle
                runs.append_jsonl(running / "metrics.jsonl", [{
                    "kind": "step", "epoch": epoch, "step": k, "steps": LIVE_STEPS,
                    "global_step": (epoch - 1) * LIVE_STEPS + k, "train_loss": 1.0 - k / 1000,
                    "train_acc": 0.5, "lr": 1e-3, "images_per_s": 250.0, "time": time.time()}])
                t0 = time.perf_counter()
                runs.write_status(running, "running", heartbeat_ts=time.time())
                page.wait_for_function(f"document.body.innerText.includes('step {k}/{LIVE_STEPS}')",
                                       polling=20, timeout=30_000)
                latencies.append(time.perf_counter() - t0)
            browser.close()
    finally:
        stop_app(server)
        log_file.close()
    return first, loads, latencies


def bench_first_opens(runs_dir: Path, repeats: int, logs: Path) -> dict[str, tuple[float, list[float]]]:
    """Per page: a fresh server, the page opened first after its start, then ``repeats`` more opens."""
    from playwright.sync_api import sync_playwright

    found = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, charts in PAGES.items():
            with open(logs / f"{name}.log", "wb") as log_file:
                server, url = start_app(runs_dir, log_file, 90)
                try:
                    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                    target = url if name == "overview" else f"{url}/{name}"
                    first = page_load(tab, target, charts)
                    found[name] = first, [page_load(tab, target, charts) for _ in range(repeats)]
                    tab.close()
                finally:
                    stop_app(server)
            print(f"  {name}: first {first:.2f} s, then median {statistics.median(found[name][1]):.2f} s", flush=True)
        browser.close()
    return found


@contextmanager
def live_registry():
    """A temporary registry of 20 runs (make_registry) whose running run keeps its heartbeat;
    yields (runs folder, the running run, the temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="retino-bench-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        print("building a registry of 20 runs (one really trained)...", flush=True)
        running = make_registry(runs_dir)
        stop = threading.Event()
        beat = threading.Thread(target=keep_alive, args=(running, stop), daemon=True)
        beat.start()
        # Held as a busy worker holds it: the page would otherwise start a worker for the queued
        # run, and its trainer would share the cores with what is measured.
        with open(runs_dir / launch.WORKER_LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield runs_dir, running, Path(tmp)
            finally:
                stop.set()
                beat.join()


def page_cpu(page: str) -> float:
    """CPU seconds of ``page``'s first script run in a fresh process (AppTest): the server's own
    share of a first open, which other work on the machine changes less than the wall time."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    if page != "overview":
        at.switch_page(f"pages/{page}.py")
    t0 = time.process_time()
    at.run()
    assert not at.exception, at.exception[0].value
    return time.process_time() - t0


def first_run_cpu(runs_dir: Path) -> dict[str, float]:
    env = {**os.environ, "RETINO_RUNS_DIR": str(runs_dir)}
    return {name: float(subprocess.run([sys.executable, __file__, "--page-cpu", name], env=env, check=True,
                                       capture_output=True, text=True).stdout.split()[-1]) for name in PAGES}


def first_opens_main(args) -> int:
    t0 = time.perf_counter()
    with live_registry() as (runs_dir, _, tmp):
        load_before = os.getloadavg()
        found = bench_first_opens(runs_dir, args.repeats, tmp)
        cpu = first_run_cpu(runs_dir)
    load_after = os.getloadavg()
    print(f"\n{os.cpu_count()} CPU cores; load average (1 / 5 / 15 min) {' / '.join(f'{x:.1f}' for x in load_before)} "
          f"before, {' / '.join(f'{x:.1f}' for x in load_after)} after; 20 runs in the registry (1 trained, "
          "1 running); headless Chromium on the same machine; navigation until the script has finished "
          "and every chart and image is drawn\n")
    print(f"| page | first open after a server start | opened again: median (max of {args.repeats}) "
          "| server CPU of the first open |")
    print("|---|---:|---:|---:|")
    for name, (first, again) in found.items():
        print(f"| {name.capitalize()} | {first:.2f} s | {statistics.median(again):.2f} s ({max(again):.2f} s) "
              f"| {cpu[name]:.2f} s |")
    print(f"\nbench time: {time.perf_counter() - t0:.0f} s")
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_like_a_trainer(run_dir: Path, stop: threading.Event, every: float = 2.0) -> None:
    """A step row every ``every`` seconds and a heartbeat, as a training run does."""
    k = 0
    while not stop.wait(every):
        k += 1
        runs.append_jsonl(run_dir / "metrics.jsonl", [{
            "kind": "step", "epoch": 16, "step": k, "steps": LIVE_STEPS, "global_step": 15 * LIVE_STEPS + k,
            "train_loss": 1.0 - k / 5000, "train_acc": 0.5, "lr": 1e-3, "images_per_s": 250.0, "time": time.time()}])
        runs.write_status(run_dir, "running", heartbeat_ts=time.time())


def bench_server(runs_dir: Path, seconds: float, tabs: int, log: Path, watcher: str | None) -> dict:
    """The server as a user starts it, Live open on four running runs: its CPU over ``seconds``;
    then every page opened in a new tab ``tabs`` times, and the first page after a restart."""
    from playwright.sync_api import sync_playwright

    extra = [] if watcher is None else ["--server.fileWatcherType", watcher]
    result: dict = {}
    with open(log, "wb") as log_file, sync_playwright() as p:
        # One browser profile, as a user's: a new tab is a new session that shares the HTTP cache.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS).new_context(
            viewport={"width": 1400, "height": 1000})
        t_start = time.perf_counter()
        server, url = start_app(runs_dir, log_file, 90, extra)
        ready = time.perf_counter() - t_start
        try:
            tab = browser.new_page()
            result["first_page_s"] = page_load(tab, url, PAGES["overview"])
            result["server_ready_s"] = ready
            page_load(tab, f"{url}/live", PAGES["live"])
            tab.wait_for_timeout(3000)
            before, t0 = cpu_seconds(server.pid), time.perf_counter()
            tab.wait_for_timeout(seconds * 1000)
            result["live_cpu_share"] = (cpu_seconds(server.pid) - before) / (time.perf_counter() - t0)
            tab.close()
            loads, per_page = [], {name: [] for name in PAGES}
            for _ in range(tabs):
                for name, charts in PAGES.items():
                    fresh = browser.new_page()  # a new tab: a new session
                    per_page[name].append(page_load(fresh, url if name == "overview" else f"{url}/{name}", charts))
                    loads.append(per_page[name][-1])
                    fresh.close()
            result["new_tab_loads"], result["new_tab_per_page"] = loads, per_page
        finally:
            stop_app(server)
            browser.close()
    result["inotify_overflows"] = log.read_text(errors="replace").count("Inotify queue overflowed")
    return result


def server_main(args) -> int:
    with tempfile.TemporaryDirectory(prefix="retino-bench-") as tmp:
        runs_dir = Path(tmp) / "runs"
        runs_dir.mkdir()
        print("building a registry of 20 runs, four of them running...", flush=True)
        running = [make_registry(runs_dir)]
        for run in runs.list_runs(runs_dir)[:30]:
            if len(running) < 4 and run.state == "done" and run.config.get("name") != "bench-real":
                runs.write_status(run.path, "running", pid=os.getpid(), host=os.uname().nodename,
                                  heartbeat_ts=time.time())
                running.append(run.path)
        stop = threading.Event()
        writers = [threading.Thread(target=write_like_a_trainer, args=(r, stop), daemon=True) for r in running]
        for w in writers:
            w.start()
        print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; the project folder "
              f"holds .venv: {(ROOT / '.venv').is_dir()}\n", flush=True)
        try:
            found = {}
            for watcher in args.watchers:
                found[watcher] = bench_server(runs_dir, args.seconds, args.tabs, Path(tmp) / f"{watcher}.log",
                                              None if watcher == "config" else watcher)
        finally:
            stop.set()
            for w in writers:
                w.join()
    print("| file watcher | server CPU, Live open on 4 running runs | new tab p95 (median) | first page after start | inotify overflows |")
    print("|---|---|---|---|---|")
    for watcher, r in found.items():
        loads = sorted(r["new_tab_loads"])
        p95 = loads[min(len(loads) - 1, int(round(0.95 * (len(loads) - 1))))]
        print(f"| {watcher} | {100 * r['live_cpu_share']:.1f} % of one core | {p95:.2f} s ({statistics.median(loads):.2f} s, "
              f"n={len(loads)}) | {r['first_page_s']:.2f} s | {r['inotify_overflows']} |")
    for watcher, r in found.items():
        print(f"\nnew tab, median per page ({watcher}): " + ", ".join(
            f"{name} {statistics.median(times):.2f} s" for name, times in r["new_tab_per_page"].items()))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm renders per page")
    parser.add_argument("--samples", type=int, default=10, help="metrics written for the latency")
    parser.add_argument("--no-browser", action="store_true", help="AppTest timings only")
    parser.add_argument("--first-opens", action="store_true",
                        help="instead: per page, its first open after a server start and later opens (the README table)")
    parser.add_argument("--page-cpu", metavar="PAGE", help=argparse.SUPPRESS)  # first_run_cpu's child
    parser.add_argument("--server", action="store_true",
                        help="instead: server CPU with Live open on 4 running runs, new-tab loads, first page")
    parser.add_argument("--seconds", type=float, default=60.0, help="--server: how long to measure the CPU")
    parser.add_argument("--tabs", type=int, default=5, help="--server: new tabs per page")
    parser.add_argument("--watchers", nargs="+", default=["config"],
                        help="--server: 'config' (the project's .streamlit/config.toml) and/or a fileWatcherType "
                             "to compare, e.g. auto")
    args = parser.parse_args(argv)
    if args.server:
        return server_main(args)
    if args.first_opens:
        return first_opens_main(args)
    if args.page_cpu:
        print(f"{page_cpu(args.page_cpu):.3f}")
        return 0

    with live_registry() as (runs_dir, running, tmp):
        os.environ["RETINO_RUNS_DIR"] = str(runs_dir)
        print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}\n")
        print("Server-side script run per page (AppTest, warm):")
        for page, times in bench_apptest(args.repeats).items():
            print(f"  {page:24s} {summary(times)}")
        if args.no_browser:
            return 0
        first, loads, latencies = bench_browser(runs_dir, running, args.repeats, args.samples, tmp / "streamlit.log")
        print("\nPage load in headless Chromium (navigation -> script finished, charts and images drawn):")
        for page in PAGES:
            print(f"  {page:24s} {summary(loads[page])}   first visit {first[page]:.2f} s")
        print("\nLive page: metric row appended -> shown in the browser:")
        print(f"  {summary(latencies)}")
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
