"""diffusers' `WanPipeline` with random weights of a real Wan2.1 config, timed per stage; and the
`wanrt bench pipeline` run it is compared with. Shared by `vs_diffusers.py` (CPU) and
`gpu_vs_torch.py pipeline` (GPU).

Nothing is downloaded: the three models are built from their configs (`UMT5EncoderModel`,
`WanTransformer3DModel`, `AutoencoderKLWan`), their weights drawn by the modules' own
initialisers, and the tokenizer is a stand-in that returns `prompt_tokens` token ids padded to
512 with their attention mask, as google/umt5-xxl's tokenizer would for a prompt of that many
tokens. The pipeline call itself is diffusers' own, unchanged: the T5 runs over all 512
positions with the padding masked (as diffusers does), then the sampling loop, the VAE decode and
the conversion to frames.

Stage times: text encoding (`encode_prompt`), each step (from the end of the previous stage to
diffusers' step-end callback), VAE decode (`vae.decode`) and the whole call.
"""

import json
import resource
import subprocess
import time
import types

# The published Wan2.1 T2V DiT configs (diffusers' names).
DIT = {
    "1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
}


def _build(make, dtype, device):
    """`make()` with the default dtype `dtype` and device `device`, so the weights are drawn
    there in that dtype directly (UMT5-XXL in f32 would be 23 GB)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make().eval()
    finally:
        torch.set_default_dtype(old)


class StandInTokenizer:
    """Returns `tokens` fixed ids (the last one `</s>`), padded to `max_length`, whatever the
    text: the shapes and masking google/umt5-xxl's tokenizer gives a prompt of that length."""

    def __init__(self, tokens, vocab):
        import torch

        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, vocab, (tokens,), generator=g)
        self.ids[-1] = 1

    def __call__(self, prompt, max_length=512, **_):
        import torch

        batch = len(prompt) if isinstance(prompt, list) else 1
        n = min(len(self.ids), max_length)
        ids = torch.zeros(batch, max_length, dtype=torch.long)
        mask = torch.zeros(batch, max_length, dtype=torch.long)
        ids[:, :n], mask[:, :n] = self.ids[:n], 1
        return types.SimpleNamespace(input_ids=ids, attention_mask=mask)


def build_pipeline(config, layers, prompt_tokens, device, dtype, vae_dtype):
    """diffusers' WanPipeline of `config` ("1.3b" or "14b", the DiT cut to `layers` blocks when
    given) with random weights: UMT5-XXL and the DiT in `dtype`, the VAE in `vae_dtype`."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    t5 = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                    num_heads=64, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                    dense_act_fn="gelu_new", is_encoder_decoder=False, use_cache=False)
    text_encoder = _build(lambda: UMT5EncoderModel(t5), dtype, device)
    dit = dict(DIT[config])
    if layers:
        dit["num_layers"] = layers
    transformer = _build(lambda: WanTransformer3DModel(
        patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, **dit), dtype, device)
    vae = _build(AutoencoderKLWan, vae_dtype, device)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=5.0)
    return WanPipeline(tokenizer=StandInTokenizer(prompt_tokens, t5.vocab_size),
                       text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)


def run_pipeline(pipe, width, height, frames, steps, cfg, sync):
    """One generation through `pipe(...)`; returns its stage times in seconds (the keys of
    `wanrt bench pipeline --json`'s `timings`). `sync()` waits for the device."""
    import torch

    marks = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            marks[name] = (start, time.perf_counter())
            return out
        return wrapper

    pipe.encode_prompt = timed("text", pipe.encode_prompt)
    pipe.vae.decode = timed("decode", pipe.vae.decode)
    step_ends = []

    def on_step(_pipe, _i, _t, kwargs):
        sync()
        step_ends.append(time.perf_counter())
        return kwargs

    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        pipe(prompt="a prompt", negative_prompt="", width=width, height=height,
             num_frames=frames, num_inference_steps=steps, guidance_scale=cfg,
             generator=torch.Generator().manual_seed(0), output_type="np",
             callback_on_step_end=on_step)
        sync()
        total = time.perf_counter() - start
    bounds = [marks["text"][1]] + step_ends
    return {
        "text_encoding_s": marks["text"][1] - marks["text"][0],
        "steps_s": [b - a for a, b in zip(bounds, bounds[1:])],
        "denoising_s": step_ends[-1] - marks["text"][1],
        "decoding_s": marks["decode"][1] - marks["decode"][0],
        "total_s": total,
    }


def peak_rss_mb():
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_wanrt(wanrt, args, timeout, nice=0):
    """`wanrt bench pipeline ARGS --json`: its JSON object, or raises with its error."""
    cmd = (["nice", "-n", str(nice)] if nice else []) + [wanrt, "bench", "pipeline", *args, "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


STAGES = [("text encoding", "text_encoding_s"), ("sampling (all steps)", "denoising_s"),
          ("VAE decode", "decoding_s"), ("total", "total_s")]


def print_table(wanrt, diffusers):
    """Both sides' stage times and the ratio diffusers / wanrt (above 1: wanrt is faster)."""
    print("| stage | diffusers s | wanrt s | diffusers/wanrt |")
    print("|---|---:|---:|---:|")
    rows = [(name, key) for name, key in STAGES[:1]]
    rows += [(f"step {i + 1}", ("steps_s", i)) for i in range(len(wanrt["steps_s"]))]
    rows += STAGES[1:]
    for name, key in rows:
        def get(t):
            if isinstance(key, tuple):
                v = t[key[0]]
                return v[key[1]] if key[1] < len(v) else float("nan")
            return t[key]
        d, w = get(diffusers), get(wanrt)
        print(f"| {name} | {d:.2f} | {w:.2f} | {d / w:.2f} |")
