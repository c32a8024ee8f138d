"""Tests of the Python package: the pipeline fixture case through the C library, errors,
cancellation, callbacks, busy pipelines and output files.

Needs the library (``WANRT_LIBRARY``) and the fixture models (``WANRT_FIXTURES``, by default
``../shared/fixtures`` next to the repository).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
import threading
from pathlib import Path

import pytest

import wanrt

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(os.environ.get("WANRT_FIXTURES", REPO.parent / "shared" / "fixtures"))
CASE = FIXTURES / "cases" / "pipeline_t2v"


def read_safetensors(path: Path) -> dict:
    """{name: (shape, list of floats)} for the float32 tensors of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        data = raw[8 + n + start : 8 + n + end]
        out[name] = (info["shape"], list(struct.unpack(f"<{len(data) // 4}f", data)))
    return out


@pytest.fixture(scope="module")
def case() -> dict:
    spec = json.loads((CASE / "case.json").read_text())
    spec["paths"] = {k: str((CASE / spec[k]).resolve()) for k in
                     ["dit", "dit_config", "vae", "vae_config", "t5", "t5_config", "tokenizer"]}
    return spec


@pytest.fixture(scope="module")
def pipeline(case: dict):
    with wanrt.Pipeline(**case["paths"]) as p:
        yield p


def small(**kw):
    """A cheap request on the tiny models."""
    args = dict(width=48, height=32, frames=1, steps=2, seed=3)
    args.update(kw)
    return args


def test_versions():
    assert wanrt.abi_version() == wanrt.ABI_VERSION == 1
    assert wanrt.version().count(".") == 2


def test_list_devices():
    # Empty without CUDA or a driver (the CI machines); otherwise each device is described.
    devices = wanrt.list_devices()
    assert isinstance(devices, list)
    for i, d in enumerate(devices):
        assert d["index"] == i and d["name"]
        assert d["compute_capability"][0] > 0
        assert d["total_memory"] > 0


def test_pipeline_case_matches_expected(case: dict, pipeline: wanrt.Pipeline, tmp_path: Path):
    inputs = read_safetensors(CASE / case["inputs"])
    expected = read_safetensors(CASE / case["expected"])
    steps = []
    video = pipeline.generate(
        case["prompt"],
        negative_prompt=case["negative_prompt"],
        width=case["width"],
        height=case["height"],
        frames=case["frames"],
        steps=case["steps"],
        solver=wanrt.Solver.UNIPC,
        shift=case["shift"],
        guidance_scale=case["guidance_scale"],
        initial_latent=inputs["x_T"][1],
        on_step=lambda step, total, sigma: steps.append((step, total, sigma)),
    )
    assert [s[0] for s in steps] == list(range(case["steps"] + 1))
    assert steps[-1][2] == 0.0
    assert (video.frame_count, video.height, video.width) == (
        case["frames"], case["height"], case["width"])

    frames = video.frames(as_numpy=False)
    want = expected["frames"][1]
    assert len(frames) == len(want)
    max_diff = max(abs(a - b) for a, b in zip(frames, want))
    assert max_diff <= case["tolerance"]["frames_max_abs_diff"]

    raw = video.latent(as_numpy=False)
    latent = struct.unpack(f"={len(raw) // 4}f", raw)
    want = expected["latent"][1]
    diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(latent, want)))
    norm = math.sqrt(sum(b * b for b in want))
    assert diff / norm <= case["tolerance"]["rel_l2_f32_compute"]
    assert video.latent_shape() == tuple(expected["latent"][0])

    params = video.json
    assert params["prompt"] == case["prompt"] and params["steps"] == case["steps"]
    video.write_mp4(tmp_path / "out.mp4")
    video.write_png_frames(tmp_path / "frames")
    assert (tmp_path / "out.mp4").stat().st_size > 0
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == case["frames"]


def test_numpy_arrays(pipeline: wanrt.Pipeline):
    np = pytest.importorskip("numpy")
    video = pipeline.generate("a cat", **small(initial_latent=np.zeros((1, 16, 1, 4, 6))))
    frames = video.frames()
    assert frames.dtype == np.uint8 and frames.shape == (1, 32, 48, 3)
    latent = video.latent()
    assert latent.dtype == np.float32 and latent.shape == (1, 16, 1, 4, 6)
    assert wanrt.has_numpy()


def test_bytes_without_numpy(pipeline: wanrt.Pipeline):
    video = pipeline.generate("a cat", **small())
    assert isinstance(video.frames(as_numpy=False), bytes)
    assert len(video.frames(as_numpy=False)) == 32 * 48 * 3
    assert video.seed == 3
    video.close()
    video.close()  # idempotent
    with pytest.raises(ValueError):
        video.frames()


def test_random_seed_is_reported(pipeline: wanrt.Pipeline):
    video = pipeline.generate("a cat", **small(seed=None))
    assert 0 <= video.seed < 2**63
    assert video.json["seed"] == video.seed


def test_errors_carry_status_and_message(case: dict, pipeline: wanrt.Pipeline):
    with pytest.raises(wanrt.WanrtError) as e:
        pipeline.generate("a cat", **small(width=40))
    assert e.value.status == wanrt.Status.INVALID_ARGUMENT
    assert "width 40 is not a multiple of 16" in str(e.value)

    with pytest.raises(wanrt.WanrtError) as e:
        pipeline.generate("a cat", **small(width=16384, height=16384, frames=81))
    assert e.value.status == wanrt.Status.OUT_OF_MEMORY
    assert "denoising 16384x16384 with 81 frames needs about" in str(e.value)

    with pytest.raises(wanrt.WanrtError) as e:
        pipeline.generate("a cat", **small(initial_latent=[0.0] * 5))
    assert "initial_latent_len is 5" in str(e.value)

    paths = dict(case["paths"], dit="/nonexistent/dit.safetensors")
    with pytest.raises(wanrt.WanrtError) as e:
        wanrt.Pipeline(**paths)
    assert e.value.status == wanrt.Status.NOT_FOUND
    assert "/nonexistent/dit.safetensors" in str(e.value)

    with pytest.raises(wanrt.WanrtError) as e:
        wanrt.Pipeline(**case["paths"], loras=[("/nonexistent/lora.safetensors", 1.0)])
    assert e.value.status == wanrt.Status.NOT_FOUND

    with pytest.raises(wanrt.WanrtError) as e:
        pipeline.generate("a cat", preset="fast")
    assert "unknown preset" in str(e.value)

    with pytest.raises(wanrt.WanrtError) as e:
        pipeline.generate("a cat", **small(attention=7))
    assert "params->attention 7 is not a wanrt_attention" in str(e.value)

    with pytest.raises(wanrt.WanrtError) as e:
        wanrt.Pipeline(demo=True, blocks_to_swap=2, max_device_memory=24 << 30)
    assert e.value.status == wanrt.Status.INVALID_ARGUMENT
    assert "apply to a CUDA device only" in str(e.value)


def test_attention_choice_is_recorded(pipeline: wanrt.Pipeline):
    g = pipeline.generate("a cat", **small(attention=wanrt.Attention.Q8))
    assert g.json["attention"] == "q8"
    g = pipeline.generate("a cat", **small(attention=wanrt.Attention.Q8_FP8))
    assert g.json["attention"] == "q8-fp8"
    assert pipeline.generate("a cat", **small()).json["attention"] == "auto"


def test_lora_is_merged(case: dict):
    lora = FIXTURES / "models" / "tiny-lora" / "lora_musubi.safetensors"
    with wanrt.Pipeline(**case["paths"], loras=[(lora, 0.75)]) as p:
        loras = p.generate("a cat", **small()).json["loras"]
    assert [(l["file"], l["strength"]) for l in loras] == [("lora_musubi.safetensors", 0.75)]


def test_runtime_lora_strength_changes_without_reloading(case: dict, pipeline: wanrt.Pipeline):
    lora = FIXTURES / "models" / "tiny-lora" / "lora_musubi.safetensors"

    def latent(p):
        raw = p.generate("a cat", **small()).latent(as_numpy=False)
        return struct.unpack(f"={len(raw) // 4}f", raw)

    def close(a, b):
        return max(abs(x - y) for x, y in zip(a, b)) < 1e-4

    base = latent(pipeline)
    with wanrt.Pipeline(**case["paths"], loras=[(lora, 3.0)]) as merged, \
            wanrt.Pipeline(**case["paths"], loras=[(lora, 3.0)], lora_mode="runtime") as rt:
        m, r = latent(merged), latent(rt)
        assert close(m, r) and not close(r, base)
        rt.set_lora_strength(0, 0.0)
        assert close(latent(rt), base)
        with pytest.raises(wanrt.WanrtError) as e:
            merged.set_lora_strength(0, 1.0)
        assert e.value.status == wanrt.Status.INVALID_ARGUMENT and "runtime" in str(e.value)
        with pytest.raises(wanrt.WanrtError) as e:
            rt.set_lora_strength(1, 1.0)
        assert "LoRA index 1" in str(e.value)
        with pytest.raises(ValueError):
            rt.set_lora_strength(-1, 1.0)
        assert rt.generate("a cat", **small()).json["lora_mode"] == "runtime"
    with pytest.raises(ValueError, match="lora_mode='fast'"):
        wanrt.Pipeline(**case["paths"], lora_mode="fast")


def test_demo_threads_and_vae_tiling():
    with wanrt.Pipeline(demo=True, threads=2) as demo:
        names = []
        whole = demo.generate("a cat", **small(),
                              on_step=lambda *a: names.append(threading.current_thread().name))
        assert whole.json["models"] == {"demo": True}
        assert whole.json["vae_tiling"] == "off"
        assert names and all(n != threading.main_thread().name for n in names)
        tiled = demo.generate("a cat", **small(), vae_tiling=(4, 1))
        assert tiled.json["vae_tiling"] == "4,1"
        assert len(tiled.frames(as_numpy=False)) == len(whole.frames(as_numpy=False))
        with pytest.raises(wanrt.WanrtError) as e:
            demo.generate("a cat", **small(), vae_tiling=(4, 4))
        assert "larger than the overlap" in str(e.value)
        with pytest.raises(ValueError, match="vae_tiling"):
            demo.generate("a cat", **small(), vae_tiling="on")
    with pytest.raises(ValueError, match="threads=0"):
        wanrt.Pipeline(demo=True, threads=0)
    with pytest.raises(wanrt.WanrtError) as e:
        wanrt.Pipeline("/some/models", demo=True)
    assert "no model paths" in str(e.value)


def test_log_callback_receives_the_plan_and_timings():
    logged = []
    wanrt.set_log_callback(lambda level, message: logged.append((level, message)))
    try:
        with wanrt.Pipeline(demo=True, threads=2) as demo:
            demo.generate("a cat", **small())
            levels = {level for level, _ in logged}
            assert all(isinstance(level, wanrt.LogLevel) for level in levels)
            assert any(level == wanrt.LogLevel.INFO and "VAE decode: tiling off" in message
                       for level, message in logged)
            assert any(level == wanrt.LogLevel.INFO and message.startswith("timings:")
                       for level, message in logged)
            assert any(level == wanrt.LogLevel.DEBUG and "denoising step" in message
                       for level, message in logged)
            wanrt.set_log_callback(None)
            count = len(logged)
            demo.generate("a cat", **small())
            assert len(logged) == count
    finally:
        wanrt.set_log_callback(None)


def test_model_facts_and_estimate_without_generating():
    with wanrt.Pipeline(demo=True, threads=2) as demo:
        info = demo.info()
        assert info["dim"] > 0 and info["dim"] % info["num_heads"] == 0
        assert info["num_layers"] > 0 and info["in_channels"] == info["out_channels"] == 16
        assert info["max_frames"] == 4093 and info["text_len"] > 0
        assert info["weight_dtype"] == "f32"
        assert info["lora_count"] == 0 and info["lora_mode"] == wanrt.LoraMode.MERGE
        assert info["demo"] is True and info["threads"] == 2
        whole = demo.estimate("a cat", **small())
        assert whole["vae_tiling"] == "off"
        assert whole["denoising"] > 0 and whole["decoding"] > 0
        assert whole["peak"] == whole["weights"] + max(whole["denoising"], whole["decoding"])
        tiled = demo.estimate("a cat", **small(vae_tiling=(4, 1)))
        assert tiled["vae_tiling"] == (4, 1)
        assert demo.generate("a cat", **small()).json["vae_tiling"] == whole["vae_tiling"]
        with pytest.raises(wanrt.WanrtError) as e:
            demo.estimate("a cat", **small(frames=5000))
        assert e.value.status == wanrt.Status.INVALID_ARGUMENT and "too many" in str(e.value)
        with pytest.raises(ValueError, match="frames"):
            demo.estimate("a cat", **small(frames=-1))


def test_frames_are_streamed_as_decoded():
    with wanrt.Pipeline(demo=True) as demo:
        got = []
        video = demo.generate("a cat", **small(frames=9),
                              on_frame=lambda *frame: got.append(frame))
        assert [(i, n, w, h) for i, n, _, w, h in got] == [(i, 9, 48, 32) for i in range(9)]
        assert b"".join(rgb for _, _, rgb, _, _ in got) == video.frames(as_numpy=False)
        seen = []
        with pytest.raises(wanrt.WanrtError) as e:
            demo.generate("a cat", **small(frames=9),
                          on_frame=lambda i, *_: seen.append(i) or i == 2)
        assert e.value.status == wanrt.Status.CANCELLED and seen == [0, 1, 2]


def test_integers_and_text_are_checked_before_c(pipeline: wanrt.Pipeline):
    for kw, text in [
        (dict(width=-16), "width=-16 is out of range: it must be 0 to 4294967295"),
        (dict(frames=2**32 + 5), "frames=4294967301 is out of range"),
        (dict(steps=2**32 + 5), "steps=4294967301 is out of range"),
        (dict(seed=2**64 - 1), "seed=18446744073709551615 is out of range: it must be 0 to "
                               "9223372036854775807"),
        (dict(seed=-1), "seed=-1 is out of range"),
        (dict(slg_blocks=[-1]), "slg_blocks entry=-1"),
    ]:
        with pytest.raises(ValueError) as e:
            pipeline.generate("a cat", **small(**kw))
        assert text in str(e.value)
    for kw in [dict(width=32.0), dict(steps="2"), dict(seed=True)]:
        with pytest.raises(TypeError, match="must be an integer"):
            pipeline.generate("a cat", **small(**kw))
    assert pipeline.generate(b"a cat", **small()).json["prompt"] == "a cat"
    with pytest.raises(TypeError, match="prompt must be str or bytes, not int"):
        pipeline.generate(5, **small())
    with pytest.raises(ValueError, match="NUL"):
        pipeline.generate("a\0cat", **small())
    with pytest.raises(wanrt.WanrtError, match="not valid UTF-8"):
        pipeline.generate(b"\xff", **small())


def test_success_clears_the_last_error(pipeline: wanrt.Pipeline):
    from wanrt import _lib

    def on_step(step, total, sigma):
        # A failing call inside the callback leaves a message while wanrt_generate runs.
        _lib.lib.wanrt_generation_width(None)

    pipeline.generate("a cat", **small(), on_step=on_step)
    assert _lib.last_error() == ""


def test_cancel_and_call_again(pipeline: wanrt.Pipeline):
    with pytest.raises(wanrt.WanrtError) as e:
        pipeline.generate("a cat", **small(), on_step=lambda step, total, sigma: step == 1)
    assert e.value.status == wanrt.Status.CANCELLED
    stages = []
    video = pipeline.generate("a cat", **small(),
                              on_stage=lambda stage, done, total: stages.append(stage))
    assert video.frame_count == 1
    assert stages[0] == wanrt.Stage.TEXT_ENCODING and stages[-1] == wanrt.Stage.DECODING


def test_callback_exception_is_reraised(pipeline: wanrt.Pipeline):
    class Boom(Exception):
        pass

    def on_step(step, total, sigma):
        raise Boom("from the callback")

    with pytest.raises(Boom):
        pipeline.generate("a cat", **small(), on_step=on_step)


def test_concurrent_call_is_refused(pipeline: wanrt.Pipeline):
    started, release = threading.Event(), threading.Event()
    results = {}

    def on_step(step, total, sigma):
        started.set()
        release.wait(timeout=60)

    def first():
        results["first"] = pipeline.generate("a cat", **small(), on_step=on_step)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(timeout=60)
    try:
        with pytest.raises(wanrt.WanrtError) as e:
            pipeline.generate("a dog", **small())
        assert e.value.status == wanrt.Status.INVALID_ARGUMENT
        assert "pipeline is busy" in str(e.value)
    finally:
        release.set()
        t.join()
    assert results["first"].frame_count == 1


# --- the ctypes declarations mirror include/wanrt.h ---------------------------------------------

HEADER = REPO / "include" / "wanrt.h"


def c_type(decl: str):
    """The ctypes type of a C declaration's type part, as the header spells it."""
    from ctypes import (POINTER, c_char_p, c_double, c_float, c_int32, c_int64, c_size_t,
                        c_uint8, c_uint32, c_uint64, c_void_p)

    from wanrt import _lib

    decl = " ".join(decl.replace("*", " * ").split())
    handles = {
        "wanrt_lora_list": _lib.LoraList,
        "wanrt_pipeline": _lib.PipelineHandle,
        "wanrt_generation": _lib.GenerationHandle,
        "wanrt_pipeline_params": _lib.PipelineParams,
        "wanrt_generate_params": _lib.GenerateParams,
        "wanrt_mp4_params": _lib.Mp4Params,
        "wanrt_model_info": _lib.ModelInfo,
        "wanrt_memory_estimate": _lib.MemoryEstimate,
        "wanrt_device_info": _lib.DeviceInfo,
        "wanrt_trainer": _lib.TrainerHandle,
    }
    scalars = {
        "size_t": c_size_t, "int32_t": c_int32, "uint32_t": c_uint32, "int64_t": c_int64,
        "float": c_float, "double": c_double, "uint8_t": c_uint8, "uint64_t": c_uint64,
        "void": None,
        "enum wanrt_status": c_int32, "wanrt_progress_fn": _lib.PROGRESS_FN,
        "wanrt_stage_fn": _lib.STAGE_FN, "wanrt_log_fn": _lib.LOG_FN,
        "wanrt_frame_fn": _lib.FRAME_FN, "wanrt_train_progress_fn": _lib.TRAIN_PROGRESS_FN,
    }
    stars = decl.count("*")
    base = decl.replace("*", "").replace("const ", "").replace("struct ", "").strip()
    if base in ("char", "void") and stars >= 1:  # a string (or untyped) pointer, maybe an array
        t, stars = (c_char_p if base == "char" else c_void_p), stars - 1
    else:
        t = handles.get(base) or scalars[base]
    for _ in range(stars):
        t = POINTER(t)
    return t


def header_text() -> str:
    import re

    return re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)


def test_structs_mirror_the_header():
    import re

    from wanrt import _lib

    structs = dict(re.findall(r"typedef struct (\w+) \{(.*?)\} \w+;", header_text(), re.S))
    ours = {"wanrt_pipeline_params": _lib.PipelineParams,
            "wanrt_generate_params": _lib.GenerateParams, "wanrt_mp4_params": _lib.Mp4Params,
            "wanrt_model_info": _lib.ModelInfo, "wanrt_memory_estimate": _lib.MemoryEstimate,
            "wanrt_device_info": _lib.DeviceInfo}
    assert set(structs) == set(ours)
    for name, body in structs.items():
        fields = []
        for line in filter(None, (l.strip() for l in body.split(";"))):
            decl, field = line.rsplit(None, 1)
            array = re.fullmatch(r"(\w+)\[(\w+)\]", field)
            if array:  # a fixed-size char array, e.g. `char name[WANRT_DEVICE_NAME_SIZE]`
                assert decl == "char", line
                size = getattr(_lib, array[2].removeprefix("WANRT_"))
                fields.append((array[1], ctypes.c_char * size))
                continue
            stars = len(field) - len(field.lstrip("*"))
            fields.append((field.lstrip("*"), c_type(decl + "*" * stars)))
        assert fields == list(ours[name]._fields_), name


def test_functions_mirror_the_header():
    import re

    from wanrt import _lib

    found = {}
    for ret, name, args in re.findall(r"^([\w ]+?\**)\s*(wanrt_\w+)\((.*?)\);", header_text(),
                                      re.S | re.M):
        params = [] if args.strip() == "void" else [
            c_type(a.strip().rsplit(None, 1)[0] + "*" * a.split()[-1].count("*"))
            if "*" in a.split()[-1]
            else c_type(a.strip().rsplit(None, 1)[0])
            for a in args.split(",")
        ]
        found[name] = (c_type(ret), params)
    assert found == {k: (r, list(a)) for k, (r, a) in _lib.SIGNATURES.items()}


def write_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """Writes float32 tensors {name: (shape, list of floats)} with string metadata."""
    header: dict = {"__metadata__": metadata}
    blob = b""
    for name, (shape, values) in tensors.items():
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + blob)


def write_train_caches(folder: Path) -> None:
    """One musubi cache item for the tiny DiT: a latent [16, 1, 4, 4] and a text [5, 32]."""
    meta = {"architecture": "wan"}
    wave = lambda n, k: [math.sin(0.7 * i + k) for i in range(n)]  # noqa: E731
    write_safetensors(folder / "img_0032x0032_wan.safetensors",
                      {"latents_1x4x4_float32": ([16, 1, 4, 4], wave(256, 0))}, meta)
    write_safetensors(folder / "img_wan_te.safetensors",
                      {"varlen_t5_float32": ([5, 32], wave(160, 1))}, meta)


def test_training_cancelled_from_the_callback_leaves_a_lora_that_loads(tmp_path, case):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    write_train_caches(cache)
    paths = case["paths"]
    seen = []

    def on_step(step, total, loss, lr):
        seen.append((step, total, loss, lr))
        return step == 2

    with wanrt.Trainer(dit=paths["dit"], dit_config=paths["dit_config"], cache_directory=cache,
                       output_dir=out, output_name="mine", network_dim=2, learning_rate=1e-2,
                       max_train_steps=5, sdpa=True) as t:
        assert t.total_steps == 5
        assert t.run(on_step=on_step) is False
        assert t.steps_taken == 2
        assert [s[:2] for s in seen] == [(1, 5), (2, 5)]
        assert all(loss > 0 and lr == pytest.approx(1e-2) for _, _, loss, lr in seen)
    lora = out / "mine.safetensors"
    raw = lora.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8 : 8 + n])["__metadata__"]["ss_steps"] == "2"
    assert len(read_safetensors(lora)) == 60

    # The LoRA loads into a pipeline and changes its output.
    with wanrt.Pipeline(**paths) as plain, wanrt.Pipeline(**paths, loras=[(lora, 1.0)]) as tuned:
        a = plain.generate("a hill", **small()).frames(as_numpy=False)
        b = tuned.generate("a hill", **small()).frames(as_numpy=False)
    assert a != b

    with pytest.raises(wanrt.WanrtError) as e:
        wanrt.Trainer(dit=paths["dit"], cache_directory=cache, output_dir=out,
                      output_name="mine", not_a_flag=1)
    assert e.value.status == wanrt.Status.INVALID_ARGUMENT
    assert "--not_a_flag" in str(e.value)


def test_device_names_and_index():
    for bad in ("cuda:x", "gpu:-1", "cpu:0", "tpu"):
        with pytest.raises(ValueError):
            wanrt.Pipeline(demo=True, device=bad)
    with pytest.raises(ValueError):
        wanrt.Pipeline(demo=True, device=wanrt.Device.CPU, device_index=1)
    # No machine has a hundredth GPU; without CUDA or a driver the cause is named instead.
    for kwargs in ({"device": "cuda:99"}, {"device": wanrt.Device.CUDA, "device_index": 99}):
        with pytest.raises(wanrt.WanrtError) as e:
            wanrt.Pipeline(demo=True, **kwargs)
        assert e.value.status == wanrt.Status.DEVICE_ERROR
