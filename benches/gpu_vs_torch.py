#!/usr/bin/env python3
"""wanrt's CUDA GEMM and attention beside PyTorch's on the Wan DiT's shapes, in the same run.

For every shape, torch.matmul (x Wᵀ, bf16) or F.scaled_dot_product_attention (bf16, [1, H, S, D])
is timed with CUDA events (median of `--iters` after `--warmup`), then `wanrt bench gemm|attention
--device cuda --json` runs with the same shape and counts; the table gives both medians, both
TFLOP/s and the ratio torch_ms / wanrt_ms (above 1: wanrt is faster). The issue's targets: GEMM
at least 0.9, attention at least 0.6 at 32,760 tokens, head_dim 128.

Skips cleanly (exit 0, with the reason) without torch, without a CUDA device, or without a wanrt
binary; a wanrt shape that fails is reported in its row.

    python3 benches/gpu_vs_torch.py --wanrt target/release/wanrt [--json out.json] [--quick]

`gpu_vs_torch.py pipeline [--config 1.3b|14b] [--layers N] [--width W] [--height H]
[--frames F] [--steps S] [--cfg C]` instead times a whole generation: diffusers' WanPipeline with
random weights of the same config (bf16, VAE f32; `wan_diffusers.py`, nothing downloaded) and
`wanrt bench pipeline --device cuda`, one after the other on the same GPU, per stage and the
ratio. It needs diffusers and transformers too (skips without them); `pipeline --help` lists
its flags.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

# (name, tokens, in, out): the 1.3B and 14B linear layers at 640x480x81 (32,760 tokens).
GEMMS = [
    ("1.3B qkvo", 32760, 1536, 1536),
    ("1.3B ffn up", 32760, 1536, 8960),
    ("1.3B ffn down", 32760, 8960, 1536),
    ("14B qkvo", 32760, 5120, 5120),
    ("14B ffn up", 32760, 5120, 13824),
]
# (name, q tokens, kv tokens, heads, head_dim): self- and cross-attention of the 1.3B model.
ATTENTIONS = [
    ("1.3B self", 32760, 32760, 12, 128),
    ("1.3B cross", 32760, 512, 12, 128),
    ("hd64 self", 8192, 8192, 16, 64),
]


def torch_ms(fn, warmup, iters):
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def torch_gemm(tokens, k, n, warmup, iters):
    import torch

    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    return torch_ms(lambda: torch.matmul(x, w.t()), warmup, iters)


def torch_attention(q_len, kv_len, heads, d, warmup, iters):
    import torch
    import torch.nn.functional as F

    q = torch.randn(1, heads, q_len, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, heads, kv_len, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, heads, kv_len, d, device="cuda", dtype=torch.bfloat16)
    return torch_ms(lambda: F.scaled_dot_product_attention(q, k, v), warmup, iters)


def wanrt_ms(wanrt, args, warmup, iters):
    """Median ms of `wanrt bench ... --json`, or the error text."""
    cmd = [wanrt, "bench", *args, "--device", "cuda", "--json",
           "--warmup", str(warmup), "--iters", str(iters)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if run.returncode != 0:
        return None, (run.stderr.strip().splitlines() or ["exit %d" % run.returncode])[-1]
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])["median_ms"], None
    except (ValueError, KeyError, IndexError) as e:
        return None, f"unreadable output: {e}"


def skip(reason, json_path):
    print(f"gpu_vs_torch: SKIP: {reason}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"skipped": reason, "rows": []}, f, indent=1)
    return 0


def pipeline_main(argv):
    """`gpu_vs_torch.py pipeline`: diffusers' WanPipeline, then wanrt, on the same GPU."""
    ap = argparse.ArgumentParser(prog="gpu_vs_torch.py pipeline",
                                 description=pipeline_main.__doc__)
    ap.add_argument("--wanrt", default=os.environ.get("WANRT_BIN") or shutil.which("wanrt")
                    or "target/release/wanrt")
    ap.add_argument("--config", default="1.3b", choices=["1.3b", "14b"])
    ap.add_argument("--layers", type=int, help="cut the DiT (both sides) to N blocks")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--json", help="also write both records to this file")
    a = ap.parse_args(argv)
    try:
        import torch
        import wan_diffusers as wd
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return skip(f"pipeline: {e}", a.json)
    if not torch.cuda.is_available():
        return skip("PyTorch sees no CUDA device", a.json)
    if not os.path.isfile(a.wanrt):
        return skip(f"no wanrt binary at {a.wanrt} (--wanrt)", a.json)
    shape = ["--config", a.config, "--width", str(a.width), "--height", str(a.height),
             "--frames", str(a.frames), "--steps", str(a.steps), "--cfg", str(a.cfg)]
    if a.layers:
        shape += ["--layers", str(a.layers)]
    # wanrt first, in its own process: its prompt length is diffusers' token count.
    try:
        w = wd.run_wanrt(a.wanrt, shape + ["--device", "cuda"], timeout=1200)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        w = {"error": str(e)[-1000:], "prompt_tokens": 144}
    pipe = wd.build_pipeline(a.config, a.layers, w["prompt_tokens"], "cuda", torch.bfloat16,
                             torch.float32)
    torch.cuda.reset_peak_memory_stats()
    d = wd.run_pipeline(pipe, a.width, a.height, a.frames, a.steps, a.cfg, torch.cuda.synchronize)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; {a.config} "
          f"(DiT layers {a.layers or 'all'}), {a.width}x{a.height}x{a.frames}, {a.steps} steps, "
          f"cfg {a.cfg}, {w['prompt_tokens']} prompt tokens")
    if "error" in w:
        print(f"wanrt failed: {w['error']}")
        print(f"diffusers: {json.dumps(d)}; peak device memory {peak:.0f} MiB")
    else:
        wd.print_table(w["timings"], d)
        print(f"device memory: diffusers peak allocated {peak:.0f} MiB, wanrt allocator "
              f"{w['device_memory_mb']:.0f} MiB; wanrt plan: {json.dumps(w['plan'])}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "wanrt": w, "diffusers": {"timings": d, "peak_device_mb": peak}}, f,
                      indent=1)
    return 0


def main():
    if sys.argv[1:2] == ["pipeline"]:
        return pipeline_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="`pipeline --help`: the whole-generation comparison")
    ap.add_argument("--wanrt", default=os.environ.get("WANRT_BIN") or shutil.which("wanrt")
                    or "target/release/wanrt")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="only the first GEMM and attention")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        return skip("PyTorch is not installed", a.json)
    if not torch.cuda.is_available():
        return skip("PyTorch sees no CUDA device", a.json)
    if not os.path.isfile(a.wanrt):
        return skip(f"no wanrt binary at {a.wanrt} (--wanrt)", a.json)

    gemms = GEMMS[:1] if a.quick else GEMMS
    attentions = ATTENTIONS[:1] if a.quick else ATTENTIONS
    rows = []
    for name, m, k, n in gemms:
        flop = 2.0 * m * k * n
        t = torch_gemm(m, k, n, a.warmup, a.iters)
        w, err = wanrt_ms(a.wanrt, ["gemm", "--tokens", str(m), "--in", str(k), "--out", str(n),
                                    "--dtype", "bf16"], a.warmup, a.iters)
        rows.append(("gemm", name, f"{m}x{k}x{n}", flop, t, w, err))
    for name, s, kv, h, d in attentions:
        flop = 4.0 * s * kv * h * d
        t = torch_attention(s, kv, h, d, a.warmup, a.iters)
        w, err = wanrt_ms(a.wanrt, ["attention", "--tokens", str(s), "--kv-tokens", str(kv),
                                    "--heads", str(h), "--head-dim", str(d)], a.warmup, a.iters)
        rows.append(("attention", name, f"{s}x{kv} h{h} d{d}", flop, t, w, err))

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| op | shape | torch ms | torch TFLOP/s | wanrt ms | wanrt TFLOP/s | torch/wanrt |")
    print("|---|---|---|---|---|---|---|")
    records = []
    for op, name, shape, flop, t, w, err in rows:
        tt = flop / t / 1e9
        if w is None:
            print(f"| {op} | {name} {shape} | {t:.3f} | {tt:.1f} | n/a | n/a | n/a ({err}) |")
        else:
            print(f"| {op} | {name} {shape} | {t:.3f} | {tt:.1f} | {w:.3f} | {flop / w / 1e9:.1f} "
                  f"| {t / w:.2f} |")
        records.append({"op": op, "name": name, "shape": shape, "flop": flop, "torch_ms": t,
                        "wanrt_ms": w, "wanrt_error": err,
                        "ratio": (t / w) if w else None})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
