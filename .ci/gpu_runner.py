#!/usr/bin/env python3
"""Runs every GPU test and benchmark of a bundle made by .ci/gpu-bundle.sh, on a GPU machine with
no Rust and no network, in under 8 minutes, and writes report.md and report.json.

Copied into the bundle as run.py; run it from anywhere:

    python3 gpu-bundle/run.py [--out DIR]      (DIR: $OUT when set, else gpu-bundle/report)

Without a GPU (or a driver) it says "no GPU" and still runs what it can: the test binaries (whose
GPU tests then print their skip reason) and the fixture harness on the CPU; the benchmarks need a
GPU and are listed as skipped. Every step has its own time limit inside an 8-minute budget; a step
that would start after the budget is spent is listed as not run.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import tarfile
import tempfile
import sys
import time

BUDGET_S = 450  # the whole run, leaving margin under 8 minutes
HERE = os.path.dirname(os.path.abspath(__file__))


def gpu_info():
    """(description, None) with a GPU, (None, reason) without."""
    try:
        run = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"nvidia-smi unavailable ({e})"
    if run.returncode != 0 or not run.stdout.strip():
        return None, f"nvidia-smi found no GPU ({(run.stderr or run.stdout).strip()[:200]})"
    return run.stdout.strip().splitlines()[0], None


def cuda_library_path():
    """Folders of the NVIDIA libraries that pip wheels (PyTorch's) install, for cuBLASLt."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "lib"))
        dirs += glob.glob(os.path.join(site, "nvidia", "cu13", "lib"))
    dirs = sorted(set(d for d in dirs if os.path.isdir(d)))
    return cublaslt_link(dirs) + dirs


def cublaslt_link(dirs):
    """wanrt's cudarc (built for CUDA 12) opens `libcublasLt.so` or `libcublasLt.so.12`, never
    CUDA 13's `libcublasLt.so.13`, which PyTorch's cu13 wheels ship without an unversioned link.
    When only that one is there, a temporary folder with the link `libcublasLt.so` to it is put
    first on the library path (the GEMM entry points wanrt calls are the same in both)."""
    if any(os.path.exists(os.path.join(d, n)) for d in dirs
           for n in ("libcublasLt.so", "libcublasLt.so.12")):
        return []
    found = [os.path.join(d, "libcublasLt.so.13") for d in dirs
             if os.path.exists(os.path.join(d, "libcublasLt.so.13"))]
    if not found:
        return []
    link_dir = tempfile.mkdtemp(prefix="wanrt-cublaslt-")
    os.symlink(found[0], os.path.join(link_dir, "libcublasLt.so"))
    return [link_dir]


def summarize(output):
    """Counts from libtest's `test result:` lines and the fixture harness's summary, plus skips."""
    passed = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", output))
    passed += sum(int(m) for m in re.findall(r"^fixtures: (\d+) passed", output, re.M))
    failed = sum(int(m) for m in re.findall(r"(\d+) failed", output))
    skips = [l.strip() for l in output.splitlines() if "SKIP" in l]
    return {"passed": passed, "failed": failed, "skip_lines": skips[:50]}


def run_step(step, env, deadline):
    name, cmd, limit = step["name"], step["cmd"], step["limit_s"]
    left = deadline - time.monotonic()
    if left < 10:
        return {"name": name, "cmd": cmd, "status": "not run (time budget spent)"}
    limit = min(limit, left)
    print(f"== {name}: {' '.join(cmd)} (limit {limit:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        run = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True,
                             timeout=limit)
        output, rc = run.stdout + run.stderr, run.returncode
        status = "pass" if rc == 0 else "fail"
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, status = None, "timeout"
    except OSError as e:
        output, rc, status = str(e), None, "fail"
    seconds = time.monotonic() - start
    result = {"name": name, "cmd": cmd, "status": status, "rc": rc, "seconds": round(seconds, 1),
              **summarize(output), "output_tail": output[-6000:]}
    if status == "pass" and result["skip_lines"] and step.get("gpu_tests"):
        result["status"] = "pass (with skips)"
    print(f"   {result['status']} in {seconds:.1f} s", flush=True)
    return result


def steps(gpu):
    bins = os.path.join(HERE, "bin")
    out = []
    # The library's unit tests: the kernel tests are the ones named gpu_*.
    out.append({"name": "kernel tests", "gpu_tests": True, "limit_s": 120,
                "cmd": [os.path.join(bins, "wanrt-lib-tests"), "gpu_", "--nocapture",
                        "--test-threads=1"]})
    # Integration tests built into the bundle because their names start with gpu or cuda.
    for path in sorted(glob.glob(os.path.join(bins, "test-*"))):
        out.append({"name": os.path.basename(path), "gpu_tests": True, "limit_s": 150,
                    "cmd": [path, "--nocapture", "--test-threads=1"]})
    # The fixture harness on the DiT cases (every backend present).
    out.append({"name": "fixtures dit_forward", "limit_s": 150,
                "cmd": [os.path.join(bins, "fixtures"), "dit_forward"]})
    wanrt = os.path.join(bins, "wanrt")
    # The devices wanrt sees (none without a GPU: it says why).
    out.append({"name": "devices", "limit_s": 30, "cmd": [wanrt, "devices"]})
    if gpu:
        for args in (["gemm", "--tokens", "32760", "--in", "1536", "--out", "8960"],
                     ["gemm", "--tokens", "32760", "--in", "1536", "--out", "8960",
                      "--dtype", "fp8"],
                     ["attention", "--tokens", "32760", "--heads", "40", "--head-dim", "128",
                      "--attention", "q8"],
                     ["attention", "--tokens", "32760", "--kv-tokens", "512"],
                     ["dit-block"], ["dit"]):
            out.append({"name": "bench " + " ".join(args), "limit_s": 60,
                        "cmd": [wanrt, "bench", *args, "--device", "cuda", "--json"]})
        # Beside torch (estimates, not yet timed on a GPU): GEMMs, then attention (bf16 and q8
        # against SDPA, 4 shapes), 13 wanrt processes of a few seconds each. Then the 14B DiT at
        # 640x480x81, 10 blocks, bf16 then q8 attention: two processes of about 20-30 s each
        # (3.6 G random weights made on the CPU and uploaded, one warm-up and two forwards of
        # 280 TFLOP). Last, so that the 450 s deadline cuts it rather than a test.
        vs_torch = [sys.executable, os.path.join(HERE, "gpu_vs_torch.py"), "--wanrt", wanrt]
        out.append({"name": "gpu_vs_torch gemm attention", "limit_s": 150,
                    "cmd": vs_torch + ["gemm", "attention", "--iters", "5", "--warmup", "2"]})
        # The whole pipeline beside diffusers' WanPipeline: 1.3B at 640x480, 6 steps, CFG 1,
        # 21 frames so that both sides fit the budget (estimate, not yet timed on a GPU).
        out.append({"name": "gpu_vs_torch pipeline", "limit_s": 150,
                    "cmd": vs_torch[:2] + ["pipeline"] + vs_torch[2:] + [
                        "--config", "1.3b", "--width", "640", "--height", "480", "--frames",
                        "21", "--steps", "6", "--cfg", "1"]})
        out.append({"name": "gpu_vs_torch dit", "limit_s": 150,
                    "cmd": vs_torch + ["dit", "--layers", "10", "--dit-iters", "2"]})
    return out


def write_reports(out_dir, report):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = ["# wanrt GPU run", "", f"- date: {report['date']}",
             f"- GPU: {report['gpu'] or 'no GPU: ' + report['no_gpu_reason']}",
             f"- bundle: {report['bundle']}", f"- total: {report['seconds']} s", "",
             "| step | status | passed | failed | seconds |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s.get('passed', '')} | "
                     f"{s.get('failed', '')} | {s.get('seconds', '')} |")
    for s in report["steps"]:
        if s.get("skip_lines"):
            lines += ["", f"## {s['name']}: skips", ""] + [f"- {l}" for l in s["skip_lines"]]
        if s["status"] not in ("pass", "pass (with skips)") and "output_tail" in s:
            lines += ["", f"## {s['name']}: output (tail)", "", "```",
                      s["output_tail"][-3000:], "```"]
        if s["name"].startswith(("bench", "gpu_vs_torch", "devices")) and "output_tail" in s:
            lines += ["", f"## {s['name']}", "", "```", s["output_tail"][-3000:], "```"]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "report"))
    a = ap.parse_args()
    start = time.monotonic()
    deadline = start + BUDGET_S
    packed = os.path.join(HERE, "bin.tar.xz")
    if os.path.exists(packed) and not os.path.isdir(os.path.join(HERE, "bin")):
        with tarfile.open(packed) as tar:  # written by .ci/gpu-bundle.sh: bin/ only
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(HERE, **safe)
    gpu, reason = gpu_info()
    print(f"GPU: {gpu}" if gpu else f"no GPU: {reason}", flush=True)
    env = dict(os.environ)
    env["WANRT_FIXTURES"] = os.path.join(HERE, "fixtures")
    # The bundle's wanrt for the tests that run it (their build path does not exist here).
    env["WANRT_BIN"] = os.path.join(HERE, "bin", "wanrt")
    env["LD_LIBRARY_PATH"] = ":".join(cuda_library_path() + [env.get("LD_LIBRARY_PATH", "")])
    results = [run_step(s, env, deadline) for s in steps(gpu)]
    if not gpu:
        results.append({"name": "benchmarks", "status": "skipped: no GPU"})
    bundle = open(os.path.join(HERE, "BUNDLE")).read().strip() if os.path.exists(
        os.path.join(HERE, "BUNDLE")) else "unknown"
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "gpu": gpu,
              "no_gpu_reason": reason, "bundle": bundle,
              "seconds": round(time.monotonic() - start, 1), "steps": results}
    print(write_reports(a.out, report))
    failed = [s for s in results if s["status"] in ("fail", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
