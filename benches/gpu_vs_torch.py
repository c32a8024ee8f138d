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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
