#!/usr/bin/env python3
"""One Wan DiT block timed side by side in PyTorch (CPU, f32) and in `wanrt bench dit-block`.

The PyTorch block below is the Wan2.1 `WanAttentionBlock` (wan-architecture.md §1.6) in plain
torch: modulated LayerNorm, q/k RMSNorm over the full width, 3-D RoPE on interleaved pairs,
SDPA, cross-attention on the affine `norm3` with the context K/V computed in the block, the
GELU(tanh) FFN and the gated residuals. Weights are random, f32, with the same shapes as wanrt's
(the values differ; the work does not).

The machine may be shared, so the two are measured in alternating rounds (torch first in odd
rounds, wanrt first in even ones, to cancel drifts in the load): each round times the torch block
`--iters` times after `--warmup` runs, and runs `wanrt bench dit-block --json` with the same
shapes, threads, warmup and iteration count. Reported: the median over rounds of the ratio of
the rounds' medians (the figure to quote), the ratio of the fastest runs (the least disturbed
ones), CPU time per run for both (user + system, all threads; OpenMP's and rayon's spinning
workers count too), peak memory, and the load average before and after.

PyTorch is needed only here: `pip install torch` (never by the build or the tests).

    python3 benches/vs_torch.py --tokens 3744 --threads 2 --iters 3 --rounds 6
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def rope_tables(grid, head_dim):
    """cos/sin `[S, 1, head_dim/2]` of the Wan 3-D RoPE: per head, pairs split t/h/w as
    d - 4(d/6), 2(d/6), 2(d/6) channels, pair j of an axis with d_a channels turning by
    pos * 10000^(-2j/d_a); tokens in (f, h, w) order. Angles in float64 like the reference."""
    hw = 2 * (head_dim // 6)
    axis_dims = [head_dim - 2 * hw, hw, hw]
    angles = []
    for axis, d_a in enumerate(axis_dims):
        theta = 10000.0 ** (-torch.arange(0, d_a, 2, dtype=torch.float64) / d_a)
        pos = torch.arange(grid[axis], dtype=torch.float64)
        shape = [1, 1, 1, d_a // 2]
        shape[axis] = grid[axis]
        ang = (pos[:, None] * theta[None, :]).reshape(shape)
        angles.append(ang.expand(grid[0], grid[1], grid[2], d_a // 2))
    a = torch.cat(angles, dim=-1).reshape(-1, 1, head_dim // 2)
    return torch.polar(torch.ones_like(a), a).to(torch.complex64)


def rope(x, freqs):
    """Rotates interleaved pairs of `x [B, S, H, D]` by the complex table `[S, 1, D/2]`."""
    b, s, h, d = x.shape
    xc = torch.view_as_complex(x.reshape(b, s, h, d // 2, 2))
    return torch.view_as_real(xc * freqs).reshape(b, s, h, d)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Block:
    """`WanAttentionBlock` with random f32 weights."""

    def __init__(self, dim, heads, ffn_dim, seed=0):
        g = torch.Generator().manual_seed(seed)

        def lin(out, inp):
            a = (3.0 / inp) ** 0.5
            w = (torch.rand(out, inp, generator=g) * 2 - 1) * a
            return w, (torch.rand(out, generator=g) * 2 - 1) * 0.02

        def gain():
            return 1 + (torch.rand(dim, generator=g) * 2 - 1) * 0.1

        self.dim, self.heads, self.eps = dim, heads, 1e-6
        self.modulation = (torch.rand(1, 6, dim, generator=g) * 2 - 1) * 0.02
        self.sa = {m: lin(dim, dim) for m in "qkvo"}
        self.sa_norm = (gain(), gain())
        self.ca = {m: lin(dim, dim) for m in "qkvo"}
        self.ca_norm = (gain(), gain())
        self.norm3 = (gain(), (torch.rand(dim, generator=g) * 2 - 1) * 0.02)
        self.ffn0 = lin(ffn_dim, dim)
        self.ffn2 = lin(dim, ffn_dim)

    def heads_of(self, x):
        return x.unflatten(-1, (self.heads, -1))

    def attend(self, q, k, v):
        """SDPA on `[B, S, H, D]` tensors."""
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return y.transpose(1, 2).flatten(2)

    def self_attn(self, x, freqs):
        p, (nq, nk) = self.sa, self.sa_norm
        q = self.heads_of(rms_norm(F.linear(x, *p["q"]), nq, self.eps))
        k = self.heads_of(rms_norm(F.linear(x, *p["k"]), nk, self.eps))
        v = self.heads_of(F.linear(x, *p["v"]))
        return F.linear(self.attend(rope(q, freqs), rope(k, freqs), v), *p["o"])

    def cross_attn(self, x, ctx):
        p, (nq, nk) = self.ca, self.ca_norm
        q = self.heads_of(rms_norm(F.linear(x, *p["q"]), nq, self.eps))
        k = self.heads_of(rms_norm(F.linear(ctx, *p["k"]), nk, self.eps))
        v = self.heads_of(F.linear(ctx, *p["v"]))
        return F.linear(self.attend(q, k, v), *p["o"])

    def forward(self, x, e0, ctx, freqs):
        e = (self.modulation + e0).chunk(6, dim=1)
        ln = lambda t: F.layer_norm(t, (self.dim,), eps=self.eps)  # noqa: E731
        x = x + self.self_attn(ln(x) * (1 + e[1]) + e[0], freqs) * e[2]
        x = x + self.cross_attn(F.layer_norm(x, (self.dim,), *self.norm3, self.eps), ctx)
        h = F.linear(ln(x) * (1 + e[4]) + e[3], *self.ffn0)
        y = F.linear(F.gelu(h, approximate="tanh"), *self.ffn2)
        return x + y * e[5]


def time_torch(fn, warmup, iters):
    """Wall ms of each call of `fn`, and the process CPU ms per call."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples = []
        cpu = time.process_time()
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
        cpu = (time.process_time() - cpu) * 1e3 / iters
    return samples, cpu


def time_wanrt(a):
    cmd = [
        a.wanrt, "bench", "dit-block", "--json",
        "--dim", str(a.dim), "--heads", str(a.heads), "--ffn-dim", str(a.ffn_dim),
        "--tokens", str(a.tokens), "--text-len", str(a.text_len),
        "--dtype", a.wanrt_dtype, "--threads", str(a.threads),
        "--warmup", str(a.warmup), "--iters", str(a.iters),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"wanrt failed ({' '.join(cmd)}):\n{out.stderr}")
    return json.loads(out.stdout)


def compare_ops(a):
    """The block's big ops alone, each side by side once: wanrt `gemm` (f32 weights) against
    `F.linear`, wanrt `attention` against SDPA, at the block's shapes."""
    s, d, f, h = a.tokens, a.dim, a.ffn_dim, a.heads
    common = ["--json", "--threads", str(a.threads), "--warmup", str(a.warmup), "--iters", str(a.iters)]
    ops = []
    for i, o in [(d, d), (d, f), (f, d)]:
        x, w, b = torch.rand(s, i), torch.rand(o, i), torch.rand(o)
        args = ["gemm", "--tokens", str(s), "--in", str(i), "--out", str(o), "--dtype", "f32"]
        ops.append((f"linear {i}->{o}", lambda x=x, w=w, b=b: F.linear(x, w, b), args))
    for kv in [s, a.text_len]:
        q, k, v = torch.rand(1, h, s, d // h), torch.rand(1, h, kv, d // h), torch.rand(1, h, kv, d // h)
        args = ["attention", "--tokens", str(s), "--kv-tokens", str(kv), "--heads", str(h),
                "--head-dim", str(d // h)]  # fmt: skip
        ops.append((f"attention {s}x{kv}", lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), args))
    for name, fn, args in ops:
        t = statistics.median(time_torch(fn, a.warmup, a.iters)[0])
        out = subprocess.run([a.wanrt, "bench", *args, *common], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"wanrt failed: {out.stderr}")
        w = json.loads(out.stdout)["median_ms"]
        print(f"{name}: torch {t:.1f} ms, wanrt {w:.1f} ms, ratio {w / t:.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=3744)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6, help="alternating torch/wanrt rounds")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn-dim", type=int, default=8960)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--wanrt-dtype", default="f32", help="wanrt weight storage (torch is f32)")
    ap.add_argument("--ops", action="store_true", help="also compare the block's GEMMs and attentions")
    ap.add_argument("wanrt", nargs="?", default="target/release/wanrt", help="wanrt binary")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    block = Block(a.dim, a.heads, a.ffn_dim)
    # wanrt's dit-block runs its tokens as a 1 × 1 × tokens grid.
    freqs = rope_tables((1, 1, a.tokens), a.dim // a.heads)
    inputs = (
        torch.rand(1, a.tokens, a.dim) * 2 - 1,
        (torch.rand(1, 6, a.dim) * 2 - 1) * 0.1,
        torch.rand(1, a.text_len, a.dim) * 2 - 1,
        freqs,
    )
    load0 = os.getloadavg()
    print(
        f"block dim {a.dim}, {a.heads} heads, ffn {a.ffn_dim}, {a.tokens} tokens, text {a.text_len}; "
        f"{a.threads} threads, {a.iters} iters x {a.rounds} rounds; torch {torch.__version__}, "
        f"wanrt weights {a.wanrt_dtype}"
    )
    t_all, w_all, ratios, t_cpu, w_cpu, w_rss = [], [], [], [], [], []
    for r in range(a.rounds):
        if r % 2 == 1:
            w = time_wanrt(a)
        t, tc = time_torch(lambda: block.forward(*inputs), a.warmup, a.iters)
        if r % 2 == 0:
            w = time_wanrt(a)
        t_all += t
        w_all += w["samples_ms"]
        t_cpu.append(tc)
        w_cpu.append(w["cpu_ms"])
        w_rss.append(w["peak_rss_mb"])
        ratios.append(w["median_ms"] / statistics.median(t))
        print(
            f"round {r + 1}: torch {statistics.median(t):.1f} ms, wanrt {w['median_ms']:.1f} ms, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    if a.ops:
        compare_ops(a)
    load1 = os.getloadavg()
    torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = statistics.median
    print(f"torch: median {med(t_all):.1f} ms, min {min(t_all):.1f} ms, cpu {med(t_cpu):.0f} ms/run")
    print(f"wanrt: median {med(w_all):.1f} ms, min {min(w_all):.1f} ms, cpu {med(w_cpu):.0f} ms/run")
    print(
        f"ratio wanrt/torch: {med(ratios):.3f} (median of {a.rounds} rounds), "
        f"{min(w_all) / min(t_all):.3f} (fastest runs), {med(w_cpu) / med(t_cpu):.3f} (cpu time)"
    )
    print(f"peak RSS: wanrt {max(w_rss):.0f} MiB, torch process {torch_rss:.0f} MiB")
    print(
        f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
        f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}"
    )


if __name__ == "__main__":
    main()
