"""wanrt: Wan2.1 text-to-video generation from Python.

A thin client of the wanrt C library (``include/wanrt.h``) through ctypes::

    import wanrt

    with wanrt.Pipeline("Wan2.1-T2V-1.3B") as pipe:
        video = pipe.generate("a cat on a windy hill", frames=33, seed=42)
        video.write_mp4("cat.mp4")

Frames and latents come back as NumPy arrays when NumPy is installed, as ``bytes`` otherwise
(choose with ``as_numpy``). Failures raise :class:`WanrtError`. Thread rules are the C API's:
one call at a time per pipeline (a concurrent call raises "pipeline is busy"), results are
immutable, anything may be closed from any thread. Calls release the GIL while they run.
"""

from __future__ import annotations

import ctypes
import json as _json
import os
from typing import Any, Callable, Optional, Sequence, Tuple, Union

from ._lib import (
    ABI_VERSION,
    FRAME_FN,
    LOG_FN,
    PROGRESS_FN,
    STAGE_FN,
    TRAIN_PROGRESS_FN,
    Device,
    DeviceInfo,
    GenerateParams,
    GenerationHandle,
    LogLevel,
    LoraList,
    LoraMode,
    MemoryEstimate,
    ModelInfo,
    Mp4Params,
    PipelineHandle,
    PipelineParams,
    Solver,
    Stage,
    Status,
    TrainerHandle,
    VaeTiling,
    WanrtError,
    Attention,
    check,
    init,
    lib,
)

try:  # NumPy is optional.
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None

__all__ = [
    "ABI_VERSION",
    "Device",
    "Generation",
    "LogLevel",
    "LoraMode",
    "Pipeline",
    "Solver",
    "Stage",
    "Attention",
    "Status",
    "Trainer",
    "VaeTiling",
    "WanrtError",
    "abi_version",
    "has_numpy",
    "list_devices",
    "set_log_callback",
    "version",
]

PathLike = Union[str, "os.PathLike[str]"]
#: ``on_step(step, total, sigma)``: return a true value to cancel.
StepCallback = Callable[[int, int, float], Any]
#: ``on_stage(stage, done, total)``: return a true value to cancel.
StageCallback = Callable[[Stage, int, int], Any]
#: ``on_frame(index, count, rgb, width, height)`` with each frame as soon as it is decoded
#: (``rgb``: ``bytes``, ``height * width * 3``): return a true value to cancel.
FrameCallback = Callable[[int, int, bytes, int, int], Any]


def version() -> str:
    """The loaded library's version, e.g. ``"0.1.0"``."""
    return lib.wanrt_version().decode()


def abi_version() -> int:
    """The loaded library's ABI version (equal to :data:`ABI_VERSION`, checked at import)."""
    return int(lib.wanrt_abi_version())


def list_devices() -> list:
    """The CUDA devices (``wanrt_list_devices``), each a dict with ``index``, ``name``,
    ``compute_capability`` (a ``(major, minor)`` tuple) and ``total_memory`` (bytes). Empty for
    a library built without CUDA or a machine without the NVIDIA driver; raises
    :class:`WanrtError` when the driver fails to answer."""
    count = ctypes.c_size_t(0)
    check(lib.wanrt_list_devices(None, 0, ctypes.byref(count)))
    while True:
        infos = (DeviceInfo * max(count.value, 1))()
        capacity = count.value
        check(lib.wanrt_list_devices(infos, capacity, ctypes.byref(count)))
        if count.value <= capacity:
            break
    return [
        {
            "index": int(d.index),
            "name": d.name.decode("utf-8", "replace"),
            "compute_capability": (int(d.compute_major), int(d.compute_minor)),
            "total_memory": int(d.total_memory),
        }
        for d in infos[: count.value]
    ]


def has_numpy() -> bool:
    """Whether frames and latents are returned as NumPy arrays by default."""
    return _np is not None


#: ``callback(level, message)`` of :func:`set_log_callback`.
LogCallback = Callable[[LogLevel, str], Any]

# Every log callback ever set: a message being delivered on another thread while a new one is
# set may still reach the old one, so none is ever freed (one small object per call).
_log_callbacks: list = []


def set_log_callback(callback: Optional[LogCallback]) -> None:
    """Sets the process-wide log callback (``wanrt_set_log_callback``): it receives the
    library's diagnostics of every level as ``callback(level, message)``, possibly from the
    library's worker threads; ``None`` (the default) makes the library silent. An exception it
    raises is printed by ctypes and otherwise ignored."""
    if callback is None:
        check(lib.wanrt_set_log_callback(LOG_FN(), None))
        return

    def forward(_user_data: Any, level: int, message: bytes) -> None:
        callback(LogLevel(level), message.decode("utf-8", "replace"))

    c_callback = LOG_FN(forward)
    _log_callbacks.append(c_callback)
    check(lib.wanrt_set_log_callback(c_callback, None))


def _path(p: Optional[PathLike]) -> Optional[bytes]:
    return None if p is None else os.fsencode(p)


U32_MAX = 2**32 - 1
#: The largest seed (seeds are 0 to 2**63 - 1).
MAX_SEED = 2**63 - 1


def _int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``low..=high``, checked before ctypes (which would silently wrap
    it): TypeError for a non-integer (bools included), ValueError out of range."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    v = value.__index__()
    if not low <= v <= high:
        raise ValueError(f"{name}={v} is out of range: it must be {low} to {high}")
    return v


def _text(name: str, value: Any) -> bytes:
    """A str (encoded as UTF-8) or bytes (passed as they are; the library checks UTF-8) as a C
    string: TypeError for anything else, ValueError for a NUL character, which would end it."""
    if isinstance(value, str):
        raw = value.encode()
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise TypeError(f"{name} must be str or bytes, not {type(value).__name__}")
    if b"\0" in raw:
        raise ValueError(f"{name} contains a NUL character")
    return raw


class Generation:
    """The result of :meth:`Pipeline.generate`: frames, latent, seed and parameters.

    The data stays in the library until :meth:`close` (or garbage collection); the accessors
    return copies, so they outlive the object.
    """

    def __init__(self, handle: "ctypes._Pointer[GenerationHandle]") -> None:
        self._handle: Optional["ctypes._Pointer[GenerationHandle]"] = handle

    def _h(self) -> "ctypes._Pointer[GenerationHandle]":
        if self._handle is None:
            raise ValueError("this Generation was closed")
        return self._handle

    @property
    def frame_count(self) -> int:
        """Number of frames."""
        return int(lib.wanrt_generation_frame_count(self._h()))

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(lib.wanrt_generation_width(self._h()))

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(lib.wanrt_generation_height(self._h()))

    @property
    def seed(self) -> int:
        """The seed the noise came from (the drawn one when none was given)."""
        return int(lib.wanrt_generation_seed(self._h()))

    @property
    def json(self) -> dict:
        """The request as run, the models and LoRAs with fingerprints, and the timings."""
        return _json.loads(lib.wanrt_generation_json(self._h()).decode())

    def frames(self, as_numpy: Optional[bool] = None) -> Any:
        """The frames, RGB ``uint8`` of shape ``[frame_count, height, width, 3]``: a NumPy
        array (``as_numpy`` true, the default when NumPy is installed) or ``bytes``."""
        size = ctypes.c_size_t()
        ptr = lib.wanrt_generation_frames(self._h(), ctypes.byref(size))
        data = ctypes.string_at(ptr, size.value)
        if not _want_numpy(as_numpy):
            return data
        shape = (self.frame_count, self.height, self.width, 3)
        return _np.frombuffer(data, dtype=_np.uint8).reshape(shape).copy()

    def latent_shape(self) -> Tuple[int, ...]:
        """``(1, 16, T, height // 8, width // 8)``."""
        shape = (ctypes.c_size_t * 5)()
        lib.wanrt_generation_latent(self._h(), shape)
        return tuple(int(d) for d in shape)

    def latent(self, as_numpy: Optional[bool] = None) -> Any:
        """The final latent, ``float32`` of :meth:`latent_shape`: a NumPy array or the raw
        bytes (native byte order)."""
        shape = (ctypes.c_size_t * 5)()
        ptr = lib.wanrt_generation_latent(self._h(), shape)
        dims = tuple(int(d) for d in shape)
        count = 1
        for d in dims:
            count *= d
        data = ctypes.string_at(ptr, count * 4)
        if not _want_numpy(as_numpy):
            return data
        return _np.frombuffer(data, dtype=_np.float32).reshape(dims).copy()

    def write_mp4(self, path: PathLike, fps: float = 16.0, qp: int = 20) -> None:
        """Writes an H.264 MP4 (atomically) that records the generation parameters."""
        params = init(Mp4Params, "wanrt_mp4_params_init")
        params.fps = fps
        params.qp = qp
        check(lib.wanrt_generation_write_mp4(self._h(), _path(path), ctypes.byref(params)))

    def write_png_frames(self, directory: PathLike) -> None:
        """Writes ``frame_00000.png``, ... into ``directory`` (created if missing)."""
        check(lib.wanrt_generation_write_png_frames(self._h(), _path(directory)))

    def close(self) -> None:
        """Frees the result now (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.wanrt_generation_free(handle)

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _want_numpy(as_numpy: Optional[bool]) -> bool:
    if as_numpy is None:
        return _np is not None
    if as_numpy and _np is None:
        raise RuntimeError("as_numpy=True needs NumPy (pip install numpy)")
    return bool(as_numpy)


def _generate_params(
    prompt: Union[str, bytes],
    *,
    negative_prompt: Optional[str] = None,
    preset: Optional[str] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    frames: Optional[int] = None,
    steps: Optional[int] = None,
    solver: Optional[Solver] = None,
    shift: Optional[float] = None,
    guidance_scale: Optional[float] = None,
    cfg_zero_star: Optional[bool] = None,
    nag_scale: Optional[float] = None,
    nag_tau: Optional[float] = None,
    nag_alpha: Optional[float] = None,
    nag_negative_prompt: Optional[str] = None,
    slg_blocks: Sequence[int] = (),
    slg_start: Optional[float] = None,
    slg_end: Optional[float] = None,
    teacache: Optional[float] = None,
    seed: Optional[int] = None,
    initial_latent: Any = None,
    lora_trigger: Optional[bool] = None,
    batch_cfg: Optional[bool] = None,
    attention: Optional[Attention] = None,
    vae_tiling: Union[str, Tuple[int, int]] = "auto",
) -> GenerateParams:
    """The C request of :meth:`Pipeline.generate`'s arguments (the callbacks excepted); it
    keeps the buffers it points to alive."""
    p = init(GenerateParams, "wanrt_generate_params_init")
    if preset is not None:
        check(lib.wanrt_generate_params_preset(ctypes.byref(p), preset.encode()))
    p.prompt = _text("prompt", prompt)
    if negative_prompt is not None:
        p.negative_prompt = _text("negative_prompt", negative_prompt)
    if nag_negative_prompt is not None:
        p.nag_negative_prompt = _text("nag_negative_prompt", nag_negative_prompt)
    for field, value in [("width", width), ("height", height), ("frames", frames),
                         ("steps", steps)]:
        if value is not None:
            setattr(p, field, _int(field, value, 0, U32_MAX))
    if seed is not None:
        p.seed = _int("seed", seed, 0, MAX_SEED)
    if vae_tiling in ("auto", "off"):
        p.vae_tiling = VaeTiling.AUTO if vae_tiling == "auto" else VaeTiling.OFF
    elif isinstance(vae_tiling, tuple) and len(vae_tiling) == 2:
        p.vae_tiling = VaeTiling.TILED
        p.vae_tile = _int("vae_tiling tile", vae_tiling[0], 1, U32_MAX)
        p.vae_tile_overlap = _int("vae_tiling overlap", vae_tiling[1], 0, U32_MAX)
    else:
        raise ValueError(
            f"vae_tiling={vae_tiling!r}: expected 'auto', 'off' or (tile, overlap)"
        )
    for field, value in [
        ("solver", None if solver is None else int(solver)),
        ("shift", shift),
        ("guidance_scale", guidance_scale),
        ("cfg_zero_star", cfg_zero_star),
        ("nag_scale", nag_scale),
        ("nag_tau", nag_tau),
        ("nag_alpha", nag_alpha),
        ("slg_start", slg_start),
        ("slg_end", slg_end),
        ("teacache_threshold", teacache),
        ("lora_trigger", lora_trigger),
        ("batch_cfg", batch_cfg),
        ("attention", None if attention is None else int(attention)),
    ]:
        if value is not None:
            setattr(p, field, value)
    blocks = (ctypes.c_uint32 * len(slg_blocks))(
        *(_int("slg_blocks entry", b, 0, U32_MAX) for b in slg_blocks)
    )
    if slg_blocks:
        p.slg_blocks = blocks
        p.slg_block_count = len(slg_blocks)
    latent = _float_buffer(initial_latent)
    if latent is not None:
        p.initial_latent = ctypes.cast(latent, ctypes.POINTER(ctypes.c_float))
        p.initial_latent_len = len(latent)
    p._buffers = (blocks, latent)  # what the pointers above point to, kept alive with p
    return p


def _device(device: Union[Device, str], index: Optional[int]) -> Tuple[int, int]:
    """``(wanrt_device, device_index)`` for ``device=`` and ``device_index=``."""
    if isinstance(device, str):
        name, sep, ordinal = device.lower().partition(":")
        if name not in ("cpu", "cuda", "gpu") or (sep and (name == "cpu" or not ordinal.isdigit())):
            raise ValueError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        if sep and index is not None:
            raise ValueError(f"device={device!r} names its index: give no device_index")
        device = Device.CPU if name == "cpu" else Device.CUDA
        if sep:
            index = int(ordinal)
    device = Device(device)
    if index is None:
        return int(device), 0
    if device != Device.CUDA:
        raise ValueError("device_index applies to Device.CUDA only")
    return int(device), _int("device_index", index, 0, 2**31 - 1)


class Pipeline:
    """The models of text-to-video generation, loaded once.

    Give a model folder (official Wan-AI layout or ComfyUI's ``models/`` tree), explicit files,
    or both (explicit files win), or ``demo=True`` for the tiny random-weight demo model (no
    files; its videos are noise; for testing an integration). ``loras`` is a sequence of
    ``(path, strength)`` applied in order, merged into the weights (``lora_mode="merge"``, the
    default) or on the fly (``"runtime"``: strengths can then change with
    :meth:`set_lora_strength`). ``threads``: the pipeline's own worker threads (default: the
    process-wide pool, one thread per core); callbacks then run on one of them.
    ``blocks_to_swap`` and ``max_device_memory`` (bytes) set the low-VRAM mode of a CUDA
    device (default: the device memory plan chooses, within all free memory). ``device`` is a
    :class:`Device` or a name, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``device_index`` picks
    the CUDA device for ``Device.CUDA`` (a ``"cuda:N"`` name carries its own).
    """

    def __init__(
        self,
        models_dir: Optional[PathLike] = None,
        *,
        dit: Optional[PathLike] = None,
        vae: Optional[PathLike] = None,
        t5: Optional[PathLike] = None,
        tokenizer: Optional[PathLike] = None,
        dit_config: Optional[PathLike] = None,
        vae_config: Optional[PathLike] = None,
        t5_config: Optional[PathLike] = None,
        loras: Sequence[Tuple[PathLike, float]] = (),
        device: Union[Device, str] = Device.CPU,
        device_index: Optional[int] = None,
        lora_mode: Union[LoraMode, str] = LoraMode.MERGE,
        threads: Optional[int] = None,
        demo: bool = False,
        blocks_to_swap: Optional[int] = None,
        max_device_memory: Optional[int] = None,
    ) -> None:
        self._handle: Optional["ctypes._Pointer[PipelineHandle]"] = None
        params = init(PipelineParams, "wanrt_pipeline_params_init")
        params.models_dir = _path(models_dir)
        params.dit = _path(dit)
        params.vae = _path(vae)
        params.t5 = _path(t5)
        params.tokenizer = _path(tokenizer)
        params.dit_config = _path(dit_config)
        params.vae_config = _path(vae_config)
        params.t5_config = _path(t5_config)
        params.device, params.device_index = _device(device, device_index)
        if isinstance(lora_mode, str):
            try:
                lora_mode = LoraMode[lora_mode.upper()]
            except KeyError:
                raise ValueError(
                    f"lora_mode={lora_mode!r}: expected 'merge' or 'runtime'"
                ) from None
        params.lora_mode = int(lora_mode)
        if threads is not None:
            params.threads = _int("threads", threads, 1, U32_MAX)
        params.demo = 1 if demo else 0
        if blocks_to_swap is not None:
            params.blocks_to_swap = _int("blocks_to_swap", blocks_to_swap, 0, 2**31 - 1)
        if max_device_memory is not None:
            params.max_device_memory = _int("max_device_memory", max_device_memory, 1, 2**64 - 1)
        lora_list = ctypes.POINTER(LoraList)()
        try:
            if loras:
                check(lib.wanrt_lora_list_new(ctypes.byref(lora_list)))
                for path, strength in loras:
                    check(lib.wanrt_lora_list_add(lora_list, _path(path), float(strength)))
                params.loras = lora_list
            handle = ctypes.POINTER(PipelineHandle)()
            check(lib.wanrt_pipeline_load(ctypes.byref(params), ctypes.byref(handle)))
            self._handle = handle
        finally:
            lib.wanrt_lora_list_free(lora_list)

    def generate(
        self,
        prompt: Union[str, bytes],
        *,
        on_step: Optional[StepCallback] = None,
        on_stage: Optional[StageCallback] = None,
        on_frame: Optional[FrameCallback] = None,
        **settings: Any,
    ) -> Generation:
        """Runs one generation. ``settings``: ``negative_prompt``, ``preset``, ``width``,
        ``height``, ``frames``, ``steps``, ``solver``, ``shift``, ``guidance_scale``,
        ``cfg_zero_star``, ``nag_scale``, ``nag_tau``, ``nag_alpha``, ``nag_negative_prompt``,
        ``slg_blocks``, ``slg_start``, ``slg_end``, ``teacache``, ``seed``, ``initial_latent``,
        ``lora_trigger``, ``batch_cfg``, ``attention``, ``vae_tiling`` (an unknown name raises
        ``TypeError``).

        ``None`` leaves a setting at the library's default (or the
        preset's: ``"quality"``, the default, or ``"distill"``). Defaults: 832x480, 81 frames,
        UniPC, 30 steps, shift 5, CFG 5, Wan's negative prompt, a random seed.

        ``initial_latent`` is the starting noise x_T, ``float32`` of shape
        ``[1, 16, (frames - 1) // 4 + 1, height // 8, width // 8]``: a NumPy array or any
        buffer or sequence of floats in row-major order.

        ``vae_tiling``: ``"auto"`` (whole frames when they fit in memory, else tiles),
        ``"off"`` (whole frames) or ``(tile, overlap)`` in latent pixels; the choice made is in
        :attr:`Generation.json` (``"vae_tiling"``).

        Integers are checked before they reach C: a ``TypeError`` for a non-integer, a
        ``ValueError`` out of range (sizes, frames and steps 0 to 2**32 - 1, ``seed`` 0 to
        2**63 - 1); the library then checks what the values mean. Text is ``str`` or UTF-8
        ``bytes``.

        ``on_step(step, total, sigma)`` sees step 0 before denoising and each step after it;
        ``on_stage(stage, done, total)`` sees every stage; ``on_frame(index, count, rgb, width,
        height)`` gets each frame as soon as the VAE has decoded it. A callback returning a true value
        cancels (:class:`WanrtError` with ``Status.CANCELLED``); an exception in a callback
        cancels and is re-raised here.
        """
        p = _generate_params(prompt, **settings)

        raised: list = []

        def guarded(fn: Callable[..., Any]) -> Callable[..., int]:
            return _guarded(fn, raised)

        # The ctypes callback objects must stay alive for the whole call.
        step_cb = PROGRESS_FN(guarded(on_step)) if on_step else PROGRESS_FN()
        stage_cb = (
            STAGE_FN(guarded(lambda s, d, t: on_stage(Stage(s), d, t)))
            if on_stage
            else STAGE_FN()
        )
        frame_cb = (
            FRAME_FN(guarded(lambda i, n, rgb, w, h: on_frame(
                i, n, ctypes.string_at(rgb, w * h * 3), w, h)))
            if on_frame
            else FRAME_FN()
        )
        p.progress = step_cb
        p.stage_progress = stage_cb
        p.frame_callback = frame_cb
        out = ctypes.POINTER(GenerationHandle)()
        status = lib.wanrt_generate(self._h(), ctypes.byref(p), ctypes.byref(out))
        if raised:
            if out:
                lib.wanrt_generation_free(out)
            raise raised[0]
        check(status)
        return Generation(out)

    def info(self) -> dict:
        """The facts of the loaded models, without generating (``wanrt_pipeline_info``):
        ``dim``, ``num_layers``, ``num_heads``, ``ffn_dim``, ``in_channels``,
        ``out_channels``, ``text_len`` (tokens), ``max_frames``, ``weight_dtype`` (``"bf16"``,
        ``"fp8 e4m3fn"``, ...), ``lora_count``, ``lora_mode`` (:class:`LoraMode`), ``demo``
        and ``threads``."""
        out = ModelInfo(struct_size=ctypes.sizeof(ModelInfo))
        check(lib.wanrt_pipeline_info(self._h(), ctypes.byref(out)))
        facts = {name: getattr(out, name) for name, _ in ModelInfo._fields_[1:]}
        facts["weight_dtype"] = out.weight_dtype.decode()
        facts["lora_mode"] = LoraMode(out.lora_mode)
        facts["demo"] = bool(out.demo)
        return facts

    def estimate(self, prompt: Union[str, bytes], **settings: Any) -> dict:
        """Checks a request (the arguments of :meth:`generate`, without callbacks) as
        :meth:`generate` would, without running it, and returns its memory estimate in bytes
        (``weights``, ``denoising``, ``decoding``, ``peak``), the memory ``available`` (``None``
        where unknown) and the plan chosen: ``vae_tiling`` (``"off"`` or ``(tile, overlap)``)
        and ``batch_cfg``. Raises what :meth:`generate` would raise before any work."""
        p = _generate_params(prompt, **settings)
        out = MemoryEstimate(struct_size=ctypes.sizeof(MemoryEstimate))
        check(lib.wanrt_pipeline_estimate(self._h(), ctypes.byref(p), ctypes.byref(out)))
        return {
            "weights": out.weights,
            "denoising": out.denoising,
            "decoding": out.decoding,
            "peak": out.peak,
            "available": out.available or None,
            "vae_tiling": (out.vae_tile, out.vae_tile_overlap)
            if out.vae_tiling == VaeTiling.TILED
            else "off",
            "batch_cfg": bool(out.batch_cfg),
        }

    def set_lora_strength(self, index: int, strength: float) -> None:
        """Changes the strength of LoRA ``index`` (in the order given) without reloading; needs
        ``lora_mode="runtime"``."""
        index = _int("index", index, 0, 2**64 - 1)
        check(lib.wanrt_pipeline_set_lora_strength(self._h(), index, float(strength)))

    def _h(self) -> "ctypes._Pointer[PipelineHandle]":
        if self._handle is None:
            raise ValueError("this Pipeline was closed")
        return self._handle

    def close(self) -> None:
        """Frees the models now (idempotent). Not while a generation on it is running."""
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.wanrt_pipeline_free(handle)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _guarded(fn: Callable[..., Any], raised: list) -> Callable[..., int]:
    """A C callback calling ``fn`` without ``user_data``: 1 (cancel) when ``fn`` returns a true
    value or raises (the exception is appended to ``raised``, to be re-raised after the C call
    returns), 0 otherwise."""

    def call(_user: Any, *args: Any) -> int:
        try:
            return 1 if fn(*args) else 0
        except BaseException as e:  # re-raised after the C call returns
            raised.append(e)
            return 1

    return call


def _flag_args(args: Sequence[Any], options: dict) -> list:
    """``args`` then ``options`` as ``wanrt train`` flags (``network_dim=4`` -> ``--network_dim
    4``; ``True`` -> the bare flag; ``False`` and ``None`` -> nothing), UTF-8 encoded."""
    out = [os.fsencode(a) for a in args]
    for name, value in options.items():
        if value is None or value is False:
            continue
        out.append(os.fsencode(f"--{name}"))
        if value is not True:
            out.append(os.fsencode(value if isinstance(value, os.PathLike) else str(value)))
    return out


class Trainer:
    """A LoRA training run of the DiT on musubi-tuner cache files (``wanrt_trainer``), with
    ``wanrt train``'s flags, which are musubi-tuner's::

        with wanrt.Trainer(dit="dit.safetensors", cache_directory="cache",
                           output_dir="out", output_name="mine", network_dim=16,
                           max_train_steps=500, save_every_n_steps=100) as t:
            t.run(on_step=lambda step, total, loss, lr: print(step, loss))

    Flags come as keyword arguments (``network_dim=16``, ``save_state=True``) or as strings in
    ``args`` (``"--network-dim", "16"``); an unknown flag raises :class:`WanrtError`
    (``Status.INVALID_ARGUMENT``). ``dataset_config="dataset.toml"`` in place of
    ``cache_directory`` trains on the caches of every dataset of musubi's TOML. The musubi
    flags wanrt ignores are reported through :func:`set_log_callback` (warnings).
    """

    def __init__(self, *args: Union[str, "os.PathLike[str]"], **options: Any) -> None:
        self._handle = None
        flags = _flag_args(args, options)
        array = (ctypes.c_char_p * len(flags))(*flags)
        out = ctypes.POINTER(TrainerHandle)()
        check(lib.wanrt_trainer_new(array, len(flags), ctypes.byref(out)))
        self._handle = out

    def run(self, on_step: Optional[Callable[[int, int, float, float], Any]] = None) -> bool:
        """Takes the remaining steps, saving what the flags ask for; True when every step was
        taken. ``on_step(step, total, loss, lr)`` is called after each step: a true value (or an
        exception, re-raised here) cancels, the LoRA of the steps taken is saved as at the end
        and ``run`` returns False; a later ``run`` continues from there."""
        raised: list = []
        cb = TRAIN_PROGRESS_FN(_guarded(on_step, raised)) if on_step else TRAIN_PROGRESS_FN()
        status = lib.wanrt_trainer_run(self._h(), cb, None)
        if raised:
            raise raised[0]
        if status == Status.CANCELLED:
            return False
        check(status)
        return True

    @property
    def steps_taken(self) -> int:
        """Optimizer steps taken (with those of a resumed state)."""
        return lib.wanrt_trainer_steps_taken(self._h())

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return lib.wanrt_trainer_total_steps(self._h())

    def _h(self) -> "ctypes._Pointer[TrainerHandle]":
        if self._handle is None:
            raise ValueError("this Trainer was closed")
        return self._handle

    def close(self) -> None:
        """Frees the run (idempotent). Not while it runs."""
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.wanrt_trainer_free(handle)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _float_buffer(x: Any) -> Optional[ctypes.Array]:
    """``x`` as a contiguous ctypes float32 array (copied), or None."""
    if x is None:
        return None
    if _np is not None and isinstance(x, _np.ndarray):
        flat = _np.ascontiguousarray(x, dtype=_np.float32).ravel()
        return (ctypes.c_float * flat.size).from_buffer_copy(flat)
    if isinstance(x, (bytes, bytearray, memoryview)):
        raw = bytes(x)
        return (ctypes.c_float * (len(raw) // 4)).from_buffer_copy(raw)
    values = list(x)
    return (ctypes.c_float * len(values))(*values)
