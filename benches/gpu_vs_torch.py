#!/usr/bin/env python3
"""wanrt's CUDA GEMM, attention and DiT forward beside PyTorch's on the Wan DiT's shapes, in one run.

Sections (positional arguments; default `gemm attention`):

- `gemm`: torch.matmul (x Wᵀ, bf16) against `wanrt bench gemm --dtype bf16`; ratio torch_ms /
  wanrt_ms (above 1: wanrt is faster). Target: at least 0.9.
- `attention`: F.scaled_dot_product_attention (bf16, [1, H, S, D], the flash backend when torch
  has it for the shape, else its default) against `wanrt bench attention --attention bf16` and
  `--attention q8` (the 8-bit kernel, its quantization pre-pass timed with it), each in TOPS
  (4·L_q·L_kv·d per head per second). Targets (issue 15, 32,760 tokens, 40 heads, head_dim 128):
  q8 at least 850 TOPS and 1.8x torch.
- `dit`: `wanrt bench dit` of the 14B config (random weights) at 640x480x81 (latent 21x60x80,
  25,200 tokens), `--layers` blocks (default 10: the full 40 fit an H200's memory but not the GPU
  run's time budget), with `--attention q8` and with `bf16`; the speed-up bf16_ms / q8_ms
  (target at least 1.4). wanrt only: torch has no Wan DiT here.

torch is timed with CUDA events (median of `--iters` after `--warmup`); `wanrt bench ... --device
cuda --json` runs with the same shape and counts and reports its median. Skips cleanly (exit 0,
with the reason) without torch, without a CUDA device, or without a wanrt binary; a wanrt run that
fails is reported in its row.

    python3 benches/gpu_vs_torch.py [gemm] [attention] [dit] --wanrt target/release/wanrt \
        [--json out.json] [--quick] [--layers N]

`gpu_vs_torch.py pipeline [--config 1.3b|14b] [--layers N] [--width W] [--height H]
[--frames F] [--steps S] [--cfg C] [--max-device-memory SIZE] [--blocks-to-swap N]` instead times
a whole generation: diffusers' WanPipeline with random weights of the same config (bf16, VAE f32;
`wan_diffusers.py`, nothing downloaded) and `wanrt bench pipeline --device cuda`, one after the
other on the same GPU, per stage and the ratio. wanrt places its models by the device memory plan
of `wanrt generate` (the last two flags bound it, wanrt's side only) and reports that plan. It needs diffusers and transformers too (skips without them); `pipeline --help` lists
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
# (name, q tokens, kv tokens, heads, head_dim): self- and cross-attention of the 1.3B and 14B
# models at 832x480x81 (32,760 tokens), and a head_dim 64 self-attention.
ATTENTIONS = [
    ("14B self", 32760, 32760, 40, 128),
    ("1.3B self", 32760, 32760, 12, 128),
    ("1.3B cross", 32760, 512, 12, 128),
    ("hd64 self", 8192, 8192, 16, 64),
]
# The attention choices wanrt runs on every attention shape (any `--attention` name works).
WANRT_ATTENTIONS = ("bf16", "q8")
# `wanrt bench dit` at 640x480x81: latent frames, height, width (25,200 tokens).
DIT_LATENT = (21, 60, 80)
SECTIONS = ("gemm", "attention", "dit")


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
    """(median ms, backend name) of SDPA, on the flash backend where torch has it."""
    import torch
    import torch.nn.functional as F

    q = torch.randn(1, heads, q_len, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, heads, kv_len, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, heads, kv_len, d, device="cuda", dtype=torch.bfloat16)
    run = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch_ms(run, warmup, iters), "flash"
    except (ImportError, RuntimeError):
        return torch_ms(run, warmup, iters), "default"


def wanrt_ms(wanrt, args, warmup, iters, timeout=300):
    """Median ms of `wanrt bench ... --json`, or the error text."""
    cmd = [wanrt, "bench", *args, "--device", "cuda", "--json",
           "--warmup", str(warmup), "--iters", str(iters)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if run.returncode != 0:
        return None, (run.stderr.strip().splitlines() or ["exit %d" % run.returncode])[-1]
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])["median_ms"], None
    except (ValueError, KeyError, IndexError) as e:
        return None, f"unreadable output: {e}"


def rate(ops, ms):
    """Tera-operations per second, or None."""
    return ops / ms / 1e9 if ms else None


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def gemm_section(a):
    print("| GEMM | shape | torch ms | torch TFLOP/s | wanrt ms | wanrt TFLOP/s | torch/wanrt |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name, m, k, n in GEMMS[:1] if a.quick else GEMMS:
        flop = 2.0 * m * k * n
        t = torch_gemm(m, k, n, a.warmup, a.iters)
        w, err = wanrt_ms(a.wanrt, ["gemm", "--tokens", str(m), "--in", str(k), "--out", str(n),
                                    "--dtype", "bf16"], a.warmup, a.iters)
        ratio = t / w if w else None
        print(f"| {name} | {m}x{k}x{n} | {t:.3f} | {rate(flop, t):.1f} | {fmt(w, '.3f')} | "
              f"{fmt(rate(flop, w), '.1f')} | {fmt(ratio, '.2f')}{f' ({err})' if err else ''} |")
        rows.append({"op": "gemm", "name": name, "shape": [m, k, n], "flop": flop,
                     "torch_ms": t, "wanrt_ms": w, "wanrt_error": err, "ratio": ratio})
    return rows


def attention_section(a):
    names = " | ".join(f"wanrt {c} ms | wanrt {c} TOPS" for c in WANRT_ATTENTIONS)
    ratios = " | ".join(f"{c} vs torch" for c in WANRT_ATTENTIONS)
    print(f"| attention | shape | torch ms | torch TOPS | {names} | {ratios} | q8 vs bf16 |")
    print("|---|---|" + "---|" * (3 + 3 * len(WANRT_ATTENTIONS)))
    rows = []
    for name, s, kv, h, d in ATTENTIONS[:1] if a.quick else ATTENTIONS:
        ops = 4.0 * s * kv * h * d
        t, backend = torch_attention(s, kv, h, d, a.warmup, a.iters)
        row = {"op": "attention", "name": name, "shape": [s, kv, h, d], "ops": ops,
               "torch_ms": t, "torch_backend": backend, "torch_tops": rate(ops, t)}
        cells, speedups = [], []
        for choice in WANRT_ATTENTIONS:
            w, err = wanrt_ms(a.wanrt, ["attention", "--tokens", str(s), "--kv-tokens", str(kv),
                                        "--heads", str(h), "--head-dim", str(d),
                                        "--attention", choice], a.warmup, a.iters)
            row[f"wanrt_{choice}_ms"], row[f"wanrt_{choice}_error"] = w, err
            row[f"wanrt_{choice}_tops"] = rate(ops, w)
            row[f"{choice}_vs_torch"] = t / w if w else None
            cells.append(f"{fmt(w, '.3f')}{f' ({err})' if err else ''} | "
                         f"{fmt(rate(ops, w), '.1f')}")
            speedups.append(fmt(row[f"{choice}_vs_torch"], ".2f"))
        q8, bf16 = row.get("wanrt_q8_ms"), row.get("wanrt_bf16_ms")
        row["q8_vs_bf16"] = bf16 / q8 if q8 and bf16 else None
        print(f"| {name} | {s}x{kv} h{h} d{d} | {t:.3f} | {rate(ops, t):.1f} ({backend}) | "
              f"{' | '.join(cells)} | {' | '.join(speedups)} | {fmt(row['q8_vs_bf16'], '.2f')} |")
        rows.append(row)
    return rows


def dit_section(a):
    f, h, w = DIT_LATENT
    print(f"| DiT 14B, {a.layers} layers, 640x480x81 (latent {f}x{h}x{w}) | ms | speed-up |")
    print("|---|---|---|")
    row = {"op": "dit", "config": "14b", "layers": a.layers, "latent": list(DIT_LATENT)}
    for choice in ("bf16", "q8"):
        ms, err = wanrt_ms(a.wanrt, ["dit", "--config", "14b", "--layers", str(a.layers),
                                     "--frames", str(f), "--height", str(h), "--width", str(w),
                                     "--attention", choice], 1, a.dit_iters, timeout=600)
        row[f"{choice}_ms"], row[f"{choice}_error"] = ms, err
    q8, bf16 = row["q8_ms"], row["bf16_ms"]
    row["speedup"] = bf16 / q8 if q8 and bf16 else None
    for choice in ("bf16", "q8"):
        err = row[f"{choice}_error"]
        speedup = fmt(row["speedup"], ".2f") + " (target 1.4)" if choice == "q8" else ""
        print(f"| --attention {choice} | {fmt(row[f'{choice}_ms'], '.1f')}"
              f"{f' ({err})' if err else ''} | {speedup} |")
    return [row]


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
    ap.add_argument("--max-device-memory", metavar="SIZE",
                    help="wanrt's device memory limit, e.g. 24G (diffusers runs unbounded)")
    ap.add_argument("--blocks-to-swap", type=int, metavar="N",
                    help="wanrt's low-VRAM mode: the DiT's last N blocks in pinned host memory")
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
    low_vram = []
    if a.max_device_memory:
        low_vram += ["--max-device-memory", a.max_device_memory]
    if a.blocks_to_swap is not None:
        low_vram += ["--blocks-to-swap", str(a.blocks_to_swap)]
    # wanrt first, in its own process: its prompt length is diffusers' token count.
    try:
        w = wd.run_wanrt(a.wanrt, shape + ["--device", "cuda"] + low_vram, timeout=1200)
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
              f"{w['device_memory_mb']:.0f} MiB; wanrt text encoder on {w['t5_device']}, VAE on "
              f"{w['vae_device']}, plan: {json.dumps(w['plan'])}")
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
    ap.add_argument("sections", nargs="*", metavar="SECTION",
                    help=f"what to compare: {', '.join(SECTIONS)} (default: gemm attention)")
    ap.add_argument("--wanrt", default=os.environ.get("WANRT_BIN") or shutil.which("wanrt")
                    or "target/release/wanrt")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--layers", type=int, default=10, help="DiT blocks of the `dit` section")
    ap.add_argument("--dit-iters", type=int, default=3, help="timed DiT forwards (1 warm-up)")
    ap.add_argument("--quick", action="store_true", help="only the first GEMM and attention")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    sections = a.sections or ["gemm", "attention"]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    try:
        import torch
    except ImportError:
        return skip("PyTorch is not installed", a.json)
    if not torch.cuda.is_available():
        return skip("PyTorch sees no CUDA device", a.json)
    if not os.path.isfile(a.wanrt):
        return skip(f"no wanrt binary at {a.wanrt} (--wanrt)", a.json)

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    run = {"gemm": gemm_section, "attention": attention_section, "dit": dit_section}
    records = []
    for name in SECTIONS:
        if name in sections:
            records += run[name](a)
            print()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
