"""The C API of ``include/wanrt.h`` declared for ctypes, section by section, and the one place
where status codes become exceptions."""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

#: The ABI these declarations describe (``WANRT_ABI_VERSION`` in the header).
ABI_VERSION = 1


class Status(enum.IntEnum):
    """``wanrt_status``: what every fallible C function returns."""

    OK = 0
    INVALID_ARGUMENT = 1
    NOT_FOUND = 2
    BAD_FILE = 3
    OUT_OF_MEMORY = 4
    DEVICE_ERROR = 5
    CANCELLED = 6
    INTERNAL = 7


class Device(enum.IntEnum):
    """``wanrt_device``."""

    CPU = 0
    CUDA = 1


class LoraMode(enum.IntEnum):
    """``wanrt_lora_mode``: how a pipeline applies its LoRAs."""

    MERGE = 0
    RUNTIME = 1


class VaeTiling(enum.IntEnum):
    """``wanrt_vae_tiling``: how the VAE decodes."""

    AUTO = 0
    OFF = 1
    TILED = 2


class Solver(enum.IntEnum):
    """``wanrt_solver``."""

    UNIPC = 0
    DPMPP = 1
    EULER = 2
    LCM = 3


class Attention(enum.IntEnum):
    """``wanrt_attention``: the DiT's self-attention."""

    AUTO = 0
    Q8 = 1
    BF16 = 2
    Q8_FP8 = 3


class Stage(enum.IntEnum):
    """``wanrt_stage``: what ``on_stage`` callbacks report."""

    TEXT_ENCODING = 0
    DENOISING = 1
    DECODING = 2


class LogLevel(enum.IntEnum):
    """``wanrt_log_level``: how important a log message is."""

    ERROR = 1
    WARN = 2
    INFO = 3
    DEBUG = 4


class WanrtError(Exception):
    """A failed wanrt call: ``status`` is a :class:`Status`, the message is the library's."""

    def __init__(self, status: int, message: str) -> None:
        try:
            self.status: Status | int = Status(status)
        except ValueError:
            self.status = status
        super().__init__(message)


class LoraList(ctypes.Structure):
    """Opaque ``wanrt_lora_list``."""


class PipelineHandle(ctypes.Structure):
    """Opaque ``wanrt_pipeline``."""


class GenerationHandle(ctypes.Structure):
    """Opaque ``wanrt_generation``."""


class TrainerHandle(ctypes.Structure):
    """Opaque ``wanrt_trainer``."""


PROGRESS_FN = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, c_float)
STAGE_FN = CFUNCTYPE(c_int32, c_void_p, c_int32, c_uint32, c_uint32)
TRAIN_PROGRESS_FN = CFUNCTYPE(c_int32, c_void_p, c_size_t, c_size_t, c_double, c_float)
LOG_FN = CFUNCTYPE(None, c_void_p, c_int32, c_char_p)
FRAME_FN = CFUNCTYPE(c_int32, c_void_p, c_uint32, c_uint32, POINTER(c_uint8), c_uint32, c_uint32)


class PipelineParams(Structure):
    """``wanrt_pipeline_params`` (fields only ever appended)."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("models_dir", c_char_p),
        ("dit", c_char_p),
        ("vae", c_char_p),
        ("t5", c_char_p),
        ("tokenizer", c_char_p),
        ("dit_config", c_char_p),
        ("vae_config", c_char_p),
        ("t5_config", c_char_p),
        ("loras", POINTER(LoraList)),
        ("device", c_int32),
        ("lora_mode", c_int32),
        ("threads", c_uint32),
        ("demo", c_int32),
        ("blocks_to_swap", c_int32),
        ("max_device_memory", c_uint64),
        ("device_index", c_int32),
    ]


class GenerateParams(Structure):
    """``wanrt_generate_params`` (fields only ever appended)."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("prompt", c_char_p),
        ("negative_prompt", c_char_p),
        ("width", c_uint32),
        ("height", c_uint32),
        ("frames", c_uint32),
        ("steps", c_uint32),
        ("solver", c_int32),
        ("cfg_zero_star", c_int32),
        ("shift", c_double),
        ("guidance_scale", c_double),
        ("zero_init_steps", c_int32),
        ("nag_scale", c_float),
        ("nag_tau", c_float),
        ("nag_alpha", c_float),
        ("nag_negative_prompt", c_char_p),
        ("slg_blocks", POINTER(c_uint32)),
        ("slg_block_count", c_size_t),
        ("slg_start", c_double),
        ("slg_end", c_double),
        ("teacache_threshold", c_double),
        ("seed", c_int64),
        ("initial_latent", POINTER(c_float)),
        ("initial_latent_len", c_size_t),
        ("lora_trigger", c_int32),
        ("batch_cfg", c_int32),
        ("progress", PROGRESS_FN),
        ("stage_progress", STAGE_FN),
        ("user_data", c_void_p),
        ("attention", c_int32),
        ("vae_tiling", c_int32),
        ("vae_tile", c_uint32),
        ("vae_tile_overlap", c_uint32),
        ("frame_callback", FRAME_FN),
        ("frame_user_data", c_void_p),
    ]


class Mp4Params(Structure):
    """``wanrt_mp4_params``."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("fps", c_double),
        ("qp", c_int32),
        ("openh264_library", c_char_p),
    ]


class ModelInfo(Structure):
    """``wanrt_model_info`` (fields only ever appended)."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("dim", c_uint32),
        ("num_layers", c_uint32),
        ("num_heads", c_uint32),
        ("ffn_dim", c_uint32),
        ("in_channels", c_uint32),
        ("out_channels", c_uint32),
        ("text_len", c_uint32),
        ("max_frames", c_uint32),
        ("weight_dtype", c_char_p),
        ("lora_count", c_uint32),
        ("lora_mode", c_int32),
        ("demo", c_int32),
        ("threads", c_uint32),
    ]


class MemoryEstimate(Structure):
    """``wanrt_memory_estimate`` (fields only ever appended)."""

    _fields_ = [
        ("struct_size", c_size_t),
        ("weights", c_uint64),
        ("denoising", c_uint64),
        ("decoding", c_uint64),
        ("peak", c_uint64),
        ("available", c_uint64),
        ("vae_tiling", c_int32),
        ("vae_tile", c_uint32),
        ("vae_tile_overlap", c_uint32),
        ("batch_cfg", c_int32),
    ]


#: ``WANRT_DEVICE_NAME_SIZE``: bytes of ``wanrt_device_info.name``.
DEVICE_NAME_SIZE = 128


class DeviceInfo(ctypes.Structure):
    """``wanrt_device_info`` (fixed size)."""

    _fields_ = [
        ("index", c_uint32),
        ("compute_major", c_int32),
        ("compute_minor", c_int32),
        ("total_memory", c_uint64),
        ("name", c_char * DEVICE_NAME_SIZE),
    ]


_STATUS = c_int32  # enum wanrt_status: an int on every platform wanrt supports

#: Every function of the header: name -> (return type, argument types).
SIGNATURES = {
    # versions, status, last error
    "wanrt_abi_version": (c_uint32, []),
    "wanrt_version": (c_char_p, []),
    "wanrt_status_str": (c_char_p, [c_int32]),
    "wanrt_last_error": (c_char_p, []),
    "wanrt_set_log_callback": (_STATUS, [LOG_FN, c_void_p]),
    # LoRA lists
    "wanrt_lora_list_new": (_STATUS, [POINTER(POINTER(LoraList))]),
    "wanrt_lora_list_add": (_STATUS, [POINTER(LoraList), c_char_p, c_float]),
    "wanrt_lora_list_count": (c_size_t, [POINTER(LoraList)]),
    "wanrt_lora_list_free": (None, [POINTER(LoraList)]),
    # pipelines
    "wanrt_pipeline_params_init": (_STATUS, [POINTER(PipelineParams), c_size_t]),
    "wanrt_pipeline_load": (
        _STATUS,
        [POINTER(PipelineParams), POINTER(POINTER(PipelineHandle))],
    ),
    "wanrt_pipeline_set_lora_strength": (
        _STATUS,
        [POINTER(PipelineHandle), c_size_t, c_float],
    ),
    "wanrt_pipeline_info": (_STATUS, [POINTER(PipelineHandle), POINTER(ModelInfo)]),
    "wanrt_pipeline_estimate": (
        _STATUS,
        [POINTER(PipelineHandle), POINTER(GenerateParams), POINTER(MemoryEstimate)],
    ),
    "wanrt_pipeline_free": (None, [POINTER(PipelineHandle)]),
    "wanrt_generate_params_init": (_STATUS, [POINTER(GenerateParams), c_size_t]),
    "wanrt_generate_params_preset": (_STATUS, [POINTER(GenerateParams), c_char_p]),
    "wanrt_generate": (
        _STATUS,
        [
            POINTER(PipelineHandle),
            POINTER(GenerateParams),
            POINTER(POINTER(GenerationHandle)),
        ],
    ),
    # results
    "wanrt_mp4_params_init": (_STATUS, [POINTER(Mp4Params), c_size_t]),
    "wanrt_generation_frame_count": (c_uint32, [POINTER(GenerationHandle)]),
    "wanrt_generation_width": (c_uint32, [POINTER(GenerationHandle)]),
    "wanrt_generation_height": (c_uint32, [POINTER(GenerationHandle)]),
    "wanrt_generation_frames": (
        POINTER(c_uint8),
        [POINTER(GenerationHandle), POINTER(c_size_t)],
    ),
    "wanrt_generation_latent": (
        POINTER(c_float),
        [POINTER(GenerationHandle), POINTER(c_size_t)],
    ),
    "wanrt_generation_seed": (c_int64, [POINTER(GenerationHandle)]),
    "wanrt_generation_json": (c_char_p, [POINTER(GenerationHandle)]),
    "wanrt_generation_write_mp4": (
        _STATUS,
        [POINTER(GenerationHandle), c_char_p, POINTER(Mp4Params)],
    ),
    "wanrt_generation_write_png_frames": (
        _STATUS,
        [POINTER(GenerationHandle), c_char_p],
    ),
    "wanrt_generation_free": (None, [POINTER(GenerationHandle)]),
    # devices
    "wanrt_list_devices": (_STATUS, [POINTER(DeviceInfo), c_size_t, POINTER(c_size_t)]),
    # training
    "wanrt_trainer_new": (
        _STATUS,
        [POINTER(c_char_p), c_size_t, POINTER(POINTER(TrainerHandle))],
    ),
    "wanrt_trainer_run": (_STATUS, [POINTER(TrainerHandle), TRAIN_PROGRESS_FN, c_void_p]),
    "wanrt_trainer_steps_taken": (c_size_t, [POINTER(TrainerHandle)]),
    "wanrt_trainer_total_steps": (c_size_t, [POINTER(TrainerHandle)]),
    "wanrt_trainer_free": (None, [POINTER(TrainerHandle)]),
}


def _candidates() -> list[str]:
    env = os.environ.get("WANRT_LIBRARY")
    if env:
        return [env]
    here = Path(__file__).resolve().parent
    names = ["libwanrt.so", "libwanrt.dylib", "wanrt.dll"]
    found = [str(here / n) for n in names if (here / n).is_file()]
    system = ctypes.util.find_library("wanrt")
    return found + ([system] if system else [])


def _load() -> ctypes.CDLL:
    candidates = _candidates()
    if not candidates:
        raise ImportError(
            "libwanrt not found: set WANRT_LIBRARY to the path of libwanrt.so (after "
            "`cargo build --release`: target/release/libwanrt.so), put it next to the wanrt "
            "package, or install it system-wide (`cargo cinstall`)"
        )
    lib = ctypes.CDLL(candidates[0])
    _declare(lib)
    abi = lib.wanrt_abi_version()
    if abi != ABI_VERSION:
        raise ImportError(
            f"{candidates[0]} has wanrt ABI {abi}, this package needs {ABI_VERSION}"
        )
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


lib = _load()


def last_error() -> str:
    """``wanrt_last_error()`` of this thread."""
    return (lib.wanrt_last_error() or b"").decode("utf-8", "replace")


def check(status: int) -> None:
    """Raises :class:`WanrtError` for any status but OK."""
    if status != Status.OK:
        raise WanrtError(status, last_error())


def init(struct_type: type, init_fn_name: str) -> Structure:
    """A parameter struct filled with the library's defaults."""
    params = struct_type()
    check(getattr(lib, init_fn_name)(ctypes.byref(params), ctypes.sizeof(params)))
    return params
