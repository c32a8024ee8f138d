#!/usr/bin/env python3
"""A whole text-to-video generation on the CPU, wanrt beside diffusers' WanPipeline, in the same
run with the same threads: per-stage times and the ratio.

wanrt: `wanrt bench pipeline --json` (random weights of the real config, the code path of
`wanrt generate`). diffusers: `WanPipeline` with random weights of the same config built from
configs (see `wan_diffusers.py`; nothing is downloaded), fed the same number of prompt tokens.
Both store the DiT and UMT5-XXL in bf16 and the VAE in f32. diffusers computes the DiT and
UMT5 in bf16 and the VAE in f32; wanrt computes in its compute mode (`--compute`, the
`WANRT_COMPUTE` variable: `bf16` by default here, bf16 products with f32 sums on AVX512-BF16 for
every GEMM-class op, the VAE's included; `f32` for the reference arithmetic). The two run one after the other, never at the same time:
UMT5-XXL alone is 11.4 GB in bf16, so the machine needs about 16 GB free (checked first).

The issue's CPU target: the real 1.3B config, 384x208x45, 6 steps, CFG 1, in at most 6 minutes
and in less time than diffusers with the same threads (2 cores).

Needs torch, diffusers and transformers (never for the build or the tests), e.g. in a venv:
`python3 -m venv /work/venv-bench && /work/venv-bench/bin/pip install torch diffusers
transformers`.

    /work/venv-bench/bin/python benches/vs_diffusers.py --wanrt target/release/wanrt \\
        --width 384 --height 208 --frames 45 --steps 6 --threads 2
"""

import argparse
import json
import os
import shutil
import sys
import time

import wan_diffusers as wd


def mem_available_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wanrt", default=os.environ.get("WANRT_BIN") or shutil.which("wanrt")
                    or "target/release/wanrt")
    ap.add_argument("--config", default="1.3b", choices=sorted(wd.DIT))
    ap.add_argument("--layers", type=int, help="cut the DiT (both sides) to N blocks")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--height", type=int, default=208)
    ap.add_argument("--frames", type=int, default=45)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-free-gib", type=float, default=16.0,
                    help="refuse to start with less memory available")
    ap.add_argument("--compute", default="bf16", choices=["bf16", "f32"],
                    help="wanrt's compute mode (WANRT_COMPUTE)")
    ap.add_argument("--skip-diffusers", action="store_true", help="time wanrt only")
    ap.add_argument("--json", help="also write both records to this file")
    a = ap.parse_args()

    free = mem_available_gib()
    if free < a.min_free_gib:
        sys.exit(f"vs_diffusers: only {free:.1f} GiB available (--min-free-gib {a.min_free_gib})")
    shape = ["--config", a.config, "--width", str(a.width), "--height", str(a.height),
             "--frames", str(a.frames), "--steps", str(a.steps), "--cfg", str(a.cfg),
             "--threads", str(a.threads), "--device", "cpu"]
    if a.layers:
        shape += ["--layers", str(a.layers)]
    os.environ["WANRT_COMPUTE"] = a.compute
    load = [os.getloadavg()[0]]
    print(f"wanrt: WANRT_COMPUTE={a.compute} {a.wanrt} bench pipeline {' '.join(shape)} "
          f"(load {load[0]:.1f}, {free:.1f} GiB available)", flush=True)
    w = wd.run_wanrt(a.wanrt, shape, timeout=4 * 3600)
    load.append(os.getloadavg()[0])
    print(json.dumps(w), flush=True)
    out = {"wanrt": w, "load": load, "wanrt_compute": a.compute}
    if not a.skip_diffusers:
        import torch

        torch.set_num_threads(a.threads)
        print(f"diffusers: building WanPipeline {a.config} (load {load[-1]:.1f}, "
              f"{mem_available_gib():.1f} GiB available)", flush=True)
        start = time.perf_counter()
        pipe = wd.build_pipeline(a.config, a.layers, w["prompt_tokens"], "cpu",
                                 torch.bfloat16, torch.float32)
        setup = time.perf_counter() - start
        d = wd.run_pipeline(pipe, a.width, a.height, a.frames, a.steps, a.cfg, lambda: None)
        load.append(os.getloadavg()[0])
        import diffusers

        out["diffusers"] = {"timings": d, "setup_s": setup, "peak_rss_mb": wd.peak_rss_mb(),
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "diffusers": diffusers.__version__}
        print(json.dumps(out["diffusers"]), flush=True)
        print(f"\n{a.config} (DiT layers {w['layers']}), {a.width}x{a.height}x{a.frames}, "
              f"{a.steps} steps, cfg {a.cfg}, {w['prompt_tokens']} prompt tokens, "
              f"{a.threads} threads; load average (1 min) {' -> '.join(f'{x:.1f}' for x in load)}")
        wd.print_table(w["timings"], d)
        print(f"peak RSS: wanrt {w['peak_rss_mb']:.0f} MiB, diffusers "
              f"{out['diffusers']['peak_rss_mb']:.0f} MiB")
    else:
        for name, key in wd.STAGES:
            print(f"{name}: {w['timings'][key]:.2f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
