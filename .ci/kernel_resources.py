#!/usr/bin/env python3
"""Compiles every kernels/*.cu for each GPU architecture wanrt ships and prints one line per
file and architecture:

    kernel <file stem> <arch> regs=<max registers> spill=<bytes> smem=<bytes> ok
    kernel <file stem> <arch> FAIL: <why>

regs and smem are the maximum over the file's kernels, spill the sum of spill stores and loads.
Exits 1 if any line fails (a compile error or any local-memory spill).

A script rather than a Rust test: it needs no Rust build, prints straight into CI's log (build
script output is hidden), and takes the same nvcc as build.rs: WANRT_NVCC, else the toolchain of
.ci/cuda-toolchain.sh (argument 1 or .cuda-toolchain/).
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ARCHS = ["sm_80", "sm_86", "sm_89", "sm_90a"]
ROOT = Path(__file__).resolve().parent.parent


def find_nvcc() -> str:
    if os.environ.get("WANRT_NVCC"):
        return os.environ["WANRT_NVCC"]
    toolchain = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".cuda-toolchain")
    return str(toolchain / "venv/nvidia/cu13/bin/nvcc")


def check(nvcc: str, source: Path, arch: str, out_dir: str) -> str:
    cubin = os.path.join(out_dir, f"{source.stem}.{arch}.cubin")
    cmd = [nvcc, "-std=c++17", "-O3", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", cubin,
           str(source)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"FAIL: {e}"
    log = run.stdout + run.stderr
    if run.returncode != 0:
        first = next((l for l in log.splitlines() if "error" in l), log.strip()[-200:])
        return f"FAIL: nvcc exit {run.returncode}: {first.strip()}"
    regs = [int(m) for m in re.findall(r"Used (\d+) registers", log)]
    smem = [int(m) for m in re.findall(r"(\d+) bytes smem", log)] or [0]
    spill = sum(int(a) + int(b) for a, b in
                re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log))
    if not regs:
        return "FAIL: ptxas reported no kernel"
    line = f"regs={max(regs)} spill={spill} smem={max(smem)}"
    return f"{line} FAIL: {spill} bytes of local-memory spills" if spill else f"{line} ok"


def main() -> int:
    nvcc = find_nvcc()
    sources = sorted((ROOT / "kernels").glob("*.cu"))
    if not sources:
        print("kernel resources: no kernels/*.cu found", file=sys.stderr)
        return 1
    failed = 0
    with tempfile.TemporaryDirectory() as out_dir:
        for source in sources:
            for arch in ARCHS:
                result = check(nvcc, source, arch, out_dir)
                failed += "FAIL" in result
                print(f"kernel {source.stem} {arch} {result}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
