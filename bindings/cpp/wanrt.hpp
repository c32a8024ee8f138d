// wanrt.hpp: a header-only C++17 wrapper over the wanrt C API (include/wanrt.h).
//
// - Handles are move-only RAII objects (wanrt::Pipeline, wanrt::Generation, wanrt::Trainer);
//   nothing to free.
// - Every failing call throws wanrt::Error, which carries the wanrt_status and the library's
//   message (wanrt_last_error()).
// - Progress is a lambda returning wanrt::Flow::Continue or wanrt::Flow::Cancel (generate() then
//   throws wanrt::Error with status WANRT_STATUS_CANCELLED): per step (the argument of
//   generate()) and per stage (GenerateParams::on_stage()). An exception thrown by a lambda
//   cancels the generation and is rethrown from generate() (it never crosses the C library).
//   C callbacks set through raw() keep their own user_data.
// - wanrt::set_log_callback() takes a lambda for the library's diagnostics (process-wide).
// - A moved-from Pipeline or Generation throws wanrt::Error (WANRT_STATUS_INVALID_ARGUMENT).
// - Parameter builders own their strings, so temporaries are fine:
//     auto pipeline = wanrt::Pipeline::load(wanrt::PipelineParams().models_dir("Wan2.1-T2V-1.3B"));
//     auto video = pipeline.generate(wanrt::GenerateParams().prompt("a cat").frames(33),
//         [](uint32_t step, uint32_t total, float) { return wanrt::Flow::Continue; });
//     video.write_mp4("cat.mp4");
//
// Thread rules are the C API's: one call at a time per pipeline (a concurrent call throws
// "pipeline is busy"), results are immutable, everything may be destroyed on any thread.
#ifndef WANRT_HPP
#define WANRT_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "wanrt.h"

namespace wanrt {

/// A failed wanrt call: the status code and the library's message.
class Error : public std::runtime_error {
public:
    Error(wanrt_status status, const std::string &message)
        : std::runtime_error(message), status_(status) {}
    /// The C status code (never WANRT_STATUS_OK).
    wanrt_status status() const noexcept { return status_; }

private:
    wanrt_status status_;
};

/// Throws wanrt::Error for any status but WANRT_STATUS_OK.
inline void check(wanrt_status status) {
    if (status != WANRT_STATUS_OK) throw Error(status, wanrt_last_error());
}

/// The loaded library's version, e.g. "0.1.0".
inline std::string version() { return wanrt_version(); }

/// Throws when the loaded library's ABI differs from the header this program was built with.
inline void check_abi() {
    if (wanrt_abi_version() != WANRT_ABI_VERSION)
        throw Error(WANRT_STATUS_INVALID_ARGUMENT,
                    "libwanrt has ABI " + std::to_string(wanrt_abi_version()) +
                        ", this program was built for " + std::to_string(WANRT_ABI_VERSION));
}

/// One CUDA device (wanrt_device_info).
struct DeviceInfo {
    uint32_t index;
    std::string name;
    int32_t compute_major;
    int32_t compute_minor;
    uint64_t total_memory;
};

/// The CUDA devices (wanrt_list_devices): empty for a library built without CUDA or a machine
/// without the NVIDIA driver; throws wanrt::Error when the driver fails to answer.
inline std::vector<DeviceInfo> list_devices() {
    size_t count = 0;
    check(wanrt_list_devices(nullptr, 0, &count));
    std::vector<wanrt_device_info> raw;
    do {
        raw.resize(count);
        check(wanrt_list_devices(raw.data(), raw.size(), &count));
    } while (count > raw.size());
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < count; ++i)
        out.push_back({raw[i].index, raw[i].name, raw[i].compute_major, raw[i].compute_minor,
                       raw[i].total_memory});
    return out;
}

/// A log callback: the level and one line of text (see wanrt_log_fn). It may be called from
/// several threads at once; an exception it throws is swallowed (the message is dropped).
using LogCallback = std::function<void(wanrt_log_level, const char *)>;

namespace detail {
inline std::mutex &log_mutex() {
    static std::mutex mutex;
    return mutex;
}

inline std::shared_ptr<const LogCallback> &log_callback() {
    static std::shared_ptr<const LogCallback> callback;
    return callback;
}

inline void log_trampoline(void *, int32_t level, const char *message) noexcept {
    std::shared_ptr<const LogCallback> callback;
    {
        std::lock_guard<std::mutex> lock(log_mutex());
        callback = log_callback();
    }
    if (!callback) return;
    try {
        (*callback)(static_cast<wanrt_log_level>(level), message);
    } catch (...) {
    }
}
}  // namespace detail

/// Sets the process-wide log callback (wanrt_set_log_callback); an empty one (the default)
/// makes the library silent. A lambda may capture anything: the wrapper keeps it alive and
/// hands each message to the callback set at that moment.
inline void set_log_callback(LogCallback callback) {
    bool on = static_cast<bool>(callback);
    {
        std::lock_guard<std::mutex> lock(detail::log_mutex());
        detail::log_callback() =
            on ? std::make_shared<const LogCallback>(std::move(callback)) : nullptr;
    }
    check(wanrt_set_log_callback(on ? detail::log_trampoline : nullptr, nullptr));
}

/// A read-only view of memory owned by a Generation.
template <typename T>
struct View {
    const T *data = nullptr;
    std::size_t size = 0;  ///< elements
    const T *begin() const noexcept { return data; }
    const T *end() const noexcept { return data + size; }
};

namespace detail {
template <typename T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *p) const noexcept { Free(p); }
};
inline const char *c_str_or_null(const std::optional<std::string> &s) {
    return s ? s->c_str() : nullptr;
}
}  // namespace detail

/// What Pipeline::load reads: a model folder and/or explicit files, LoRAs, the device.
class PipelineParams {
public:
    PipelineParams() = default;
    /// A model folder (official Wan-AI layout or ComfyUI's models/ tree).
    PipelineParams &models_dir(std::string v) { return set(models_dir_, std::move(v)); }
    PipelineParams &dit(std::string v) { return set(dit_, std::move(v)); }
    PipelineParams &vae(std::string v) { return set(vae_, std::move(v)); }
    PipelineParams &t5(std::string v) { return set(t5_, std::move(v)); }
    PipelineParams &tokenizer(std::string v) { return set(tokenizer_, std::move(v)); }
    PipelineParams &dit_config(std::string v) { return set(dit_config_, std::move(v)); }
    PipelineParams &vae_config(std::string v) { return set(vae_config_, std::move(v)); }
    PipelineParams &t5_config(std::string v) { return set(t5_config_, std::move(v)); }
    /// Adds a LoRA merged at load (in the order added) with its strength.
    PipelineParams &lora(std::string path, float strength = 1.0f) {
        loras_.emplace_back(std::move(path), strength);
        return *this;
    }
    /// Where the DiT and the sampling loop run; `index` picks the CUDA device (its ordinal in
    /// list_devices()).
    PipelineParams &device(wanrt_device d, int32_t index = 0) {
        device_ = d;
        device_index_ = index;
        return *this;
    }
    /// The device by name: "cpu", "cuda" or "cuda:N"; throws Error (invalid argument) for any
    /// other name.
    PipelineParams &device(const std::string &name) {
        const auto colon = name.find(':');
        const std::string kind = name.substr(0, colon);
        const std::string index = colon == std::string::npos ? "0" : name.substr(colon + 1);
        const bool digits = !index.empty() && index.size() < 10 &&
                            index.find_first_not_of("0123456789") == std::string::npos;
        if (kind == "cpu" && colon == std::string::npos) return device(WANRT_DEVICE_CPU);
        if (kind == "cuda" && digits) return device(WANRT_DEVICE_CUDA, std::stoi(index));
        throw Error(WANRT_STATUS_INVALID_ARGUMENT,
                    "device \"" + name + "\": expected cpu, cuda or cuda:N");
    }
    /// How LoRAs are applied: merged at load (default) or at run time (strengths can change
    /// with Pipeline::set_lora_strength).
    PipelineParams &lora_mode(wanrt_lora_mode m) {
        lora_mode_ = m;
        return *this;
    }
    /// The pipeline's own worker threads; 0 (default): the process-wide pool.
    PipelineParams &threads(uint32_t n) {
        threads_ = n;
        return *this;
    }
    /// The tiny random-weight demo model instead of files (its videos are noise).
    PipelineParams &demo(bool on) {
        demo_ = on;
        return *this;
    }
    /// Low-VRAM mode (CUDA): keep the DiT's last n blocks in pinned host memory; -1 (default):
    /// the device memory plan chooses.
    PipelineParams &blocks_to_swap(int32_t n) {
        blocks_to_swap_ = n;
        return *this;
    }
    /// The device memory in bytes the pipeline may use; 0 (default): what is free (CUDA).
    PipelineParams &max_device_memory(uint64_t bytes) {
        max_device_memory_ = bytes;
        return *this;
    }

private:
    friend class Pipeline;
    PipelineParams &set(std::optional<std::string> &field, std::string v) {
        field = std::move(v);
        return *this;
    }
    std::optional<std::string> models_dir_, dit_, vae_, t5_, tokenizer_, dit_config_,
        vae_config_, t5_config_;
    std::vector<std::pair<std::string, float>> loras_;
    wanrt_device device_ = WANRT_DEVICE_CPU;
    int32_t device_index_ = 0;
    wanrt_lora_mode lora_mode_ = WANRT_LORA_MODE_MERGE;
    uint32_t threads_ = 0;
    bool demo_ = false;
    int32_t blocks_to_swap_ = -1;
    uint64_t max_device_memory_ = 0;
};

/// What a progress callback answers.
enum class Flow { Continue, Cancel };

/// The per-step progress callback: (step, total, sigma) -> Flow. Called with step 0 before the
/// first denoising step and after each step.
using Progress = std::function<Flow(uint32_t step, uint32_t total, float sigma)>;

/// The per-stage progress callback: (stage, done, total) -> Flow, as each stage starts
/// (done 0) and after each prompt, step and frame.
using StageProgress = std::function<Flow(wanrt_stage stage, uint32_t done, uint32_t total)>;

/// The frame callback: (index, count, rgb, width, height) -> Flow, with each frame as soon as
/// the VAE has decoded it; `rgb` (height * width * 3 bytes) is valid only during the call.
using FrameCallback = std::function<Flow(uint32_t index, uint32_t count, const uint8_t *rgb,
                                         uint32_t width, uint32_t height)>;

/// One generation request. Starts from the library's defaults (the "quality" preset at
/// 832x480, 81 frames, random seed); each setter changes one field. raw() gives the C struct
/// for fields without a setter.
class GenerateParams {
public:
    GenerateParams() { check(wanrt_generate_params_init(&raw_, sizeof raw_)); }
    GenerateParams &prompt(std::string v) { prompt_ = std::move(v); return *this; }
    /// Unset: Wan's default negative prompt.
    GenerateParams &negative_prompt(std::string v) { negative_ = std::move(v); return *this; }
    GenerateParams &size(uint32_t width, uint32_t height) {
        raw_.width = width;
        raw_.height = height;
        return *this;
    }
    GenerateParams &frames(uint32_t n) { raw_.frames = n; return *this; }
    GenerateParams &steps(uint32_t n) { raw_.steps = n; return *this; }
    GenerateParams &solver(wanrt_solver s) { raw_.solver = s; return *this; }
    GenerateParams &shift(double v) { raw_.shift = v; return *this; }
    GenerateParams &guidance_scale(double v) { raw_.guidance_scale = v; return *this; }
    GenerateParams &cfg_zero_star(bool on) { raw_.cfg_zero_star = on; return *this; }
    /// -1: a random seed (Generation::seed() tells which).
    GenerateParams &seed(int64_t v) { raw_.seed = v; return *this; }
    /// NAG with its scale (>= 1), tau, alpha and negative prompt (unset: Wan's default).
    GenerateParams &nag(float scale, float tau = 2.5f, float alpha = 0.25f,
                        std::optional<std::string> negative_prompt = std::nullopt) {
        raw_.nag_scale = scale;
        raw_.nag_tau = tau;
        raw_.nag_alpha = alpha;
        nag_negative_ = std::move(negative_prompt);
        return *this;
    }
    /// Skip Layer Guidance on `blocks` from fraction `start` to `end` of the steps.
    GenerateParams &slg(std::vector<uint32_t> blocks, double start = 0.1, double end = 1.0) {
        slg_blocks_ = std::move(blocks);
        raw_.slg_start = start;
        raw_.slg_end = end;
        return *this;
    }
    /// 0: off.
    GenerateParams &teacache(double threshold) { raw_.teacache_threshold = threshold; return *this; }
    /// The initial latent x_T, [1, 16, (frames-1)/4+1, height/8, width/8] row-major.
    GenerateParams &initial_latent(std::vector<float> x) {
        latent_ = std::move(x);
        return *this;
    }
    GenerateParams &lora_trigger(bool on) { raw_.lora_trigger = on; return *this; }
    GenerateParams &batch_cfg(bool on) { raw_.batch_cfg = on; return *this; }
    GenerateParams &attention(wanrt_attention a) { raw_.attention = a; return *this; }
    /// VAE decoding: whole frames when they fit in memory, else tiles (the default).
    GenerateParams &vae_tiling_auto() { return vae_tiling(WANRT_VAE_TILING_AUTO, 0, 0); }
    /// VAE decoding: whole frames.
    GenerateParams &vae_tiling_off() { return vae_tiling(WANRT_VAE_TILING_OFF, 0, 0); }
    /// VAE decoding in tiles of `tile` latent pixels overlapping by `overlap`.
    GenerateParams &vae_tiles(uint32_t tile, uint32_t overlap) {
        return vae_tiling(WANRT_VAE_TILING_TILED, tile, overlap);
    }
    /// The per-stage progress callback (replaces a C stage_progress set through raw()).
    GenerateParams &on_stage(StageProgress f) {
        on_stage_ = std::move(f);
        return *this;
    }
    /// Receives each frame as it is decoded (a C callback set through raw() keeps its own
    /// frame_user_data).
    GenerateParams &on_frame(FrameCallback f) {
        on_frame_ = std::move(f);
        return *this;
    }
    /// "quality" or "distill": sets solver, steps, shift, guidance and NAG.
    GenerateParams &preset(const std::string &name) {
        check(wanrt_generate_params_preset(&raw_, name.c_str()));
        return *this;
    }
    /// The C struct (pointer fields are filled in by Pipeline::generate from this object).
    wanrt_generate_params &raw() noexcept { return raw_; }

private:
    friend class Pipeline;
    GenerateParams &vae_tiling(wanrt_vae_tiling mode, uint32_t tile, uint32_t overlap) {
        raw_.vae_tiling = mode;
        raw_.vae_tile = tile;
        raw_.vae_tile_overlap = overlap;
        return *this;
    }
    /// The C struct with its pointers aimed at this object's storage.
    wanrt_generate_params c_params() const {
        wanrt_generate_params p = raw_;
        p.prompt = prompt_.c_str();
        p.negative_prompt = detail::c_str_or_null(negative_);
        p.nag_negative_prompt = detail::c_str_or_null(nag_negative_);
        p.slg_blocks = slg_blocks_.empty() ? nullptr : slg_blocks_.data();
        p.slg_block_count = slg_blocks_.size();
        p.initial_latent = latent_.empty() ? nullptr : latent_.data();
        p.initial_latent_len = latent_.size();
        return p;
    }
    wanrt_generate_params raw_;
    std::string prompt_;
    std::optional<std::string> negative_, nag_negative_;
    std::vector<uint32_t> slg_blocks_;
    std::vector<float> latent_;
    StageProgress on_stage_;
    FrameCallback on_frame_;
};

namespace detail {
/// The C handle of a wrapper, or wanrt::Error when it was moved from.
template <typename T>
T *live(T *handle, const char *what) {
    if (!handle)
        throw Error(WANRT_STATUS_INVALID_ARGUMENT,
                    std::string("this wanrt::") + what + " was moved from");
    return handle;
}
}  // namespace detail

/// The result of Pipeline::generate: frames, latent, seed and parameters. Move-only.
class Generation {
public:
    uint32_t frame_count() const { return wanrt_generation_frame_count(live()); }
    uint32_t width() const { return wanrt_generation_width(live()); }
    uint32_t height() const { return wanrt_generation_height(live()); }
    /// frame_count x height x width x 3 bytes of RGB.
    View<uint8_t> frames() const {
        View<uint8_t> v;
        v.data = wanrt_generation_frames(live(), &v.size);
        return v;
    }
    /// The final latent, float32 [1, 16, T, height/8, width/8].
    View<float> latent() const {
        View<float> v;
        std::array<std::size_t, 5> s = latent_shape();
        v.data = wanrt_generation_latent(live(), nullptr);
        v.size = s[0] * s[1] * s[2] * s[3] * s[4];
        return v;
    }
    std::array<std::size_t, 5> latent_shape() const {
        std::array<std::size_t, 5> shape{};
        wanrt_generation_latent(live(), shape.data());
        return shape;
    }
    int64_t seed() const { return wanrt_generation_seed(live()); }
    /// The request as run, the models, LoRAs and timings, as JSON.
    std::string json() const { return wanrt_generation_json(live()); }
    /// An H.264 MP4 (fps in (0, 1000], qp 0..51), written atomically.
    void write_mp4(const std::string &path, double fps = 16.0, int qp = 20) const {
        wanrt_mp4_params p;
        check(wanrt_mp4_params_init(&p, sizeof p));
        p.fps = fps;
        p.qp = qp;
        check(wanrt_generation_write_mp4(live(), path.c_str(), &p));
    }
    /// frame_00000.png, frame_00001.png, ... in `dir` (created if missing).
    void write_png_frames(const std::string &dir) const {
        check(wanrt_generation_write_png_frames(live(), dir.c_str()));
    }
    /// The C handle, still owned by this object.
    const wanrt_generation *get() const noexcept { return handle_.get(); }

private:
    friend class Pipeline;
    explicit Generation(wanrt_generation *h) : handle_(h) {}
    const wanrt_generation *live() const { return detail::live(get(), "Generation"); }
    std::unique_ptr<wanrt_generation, detail::Deleter<wanrt_generation, wanrt_generation_free>>
        handle_;
};

/// The loaded models; generate() any number of times. Move-only.
class Pipeline {
public:
    static Pipeline load(const PipelineParams &params) {
        using Loras = std::unique_ptr<wanrt_lora_list,
                                      detail::Deleter<wanrt_lora_list, wanrt_lora_list_free>>;
        wanrt_pipeline_params p;
        check(wanrt_pipeline_params_init(&p, sizeof p));
        p.models_dir = detail::c_str_or_null(params.models_dir_);
        p.dit = detail::c_str_or_null(params.dit_);
        p.vae = detail::c_str_or_null(params.vae_);
        p.t5 = detail::c_str_or_null(params.t5_);
        p.tokenizer = detail::c_str_or_null(params.tokenizer_);
        p.dit_config = detail::c_str_or_null(params.dit_config_);
        p.vae_config = detail::c_str_or_null(params.vae_config_);
        p.t5_config = detail::c_str_or_null(params.t5_config_);
        p.device = params.device_;
        p.lora_mode = params.lora_mode_;
        p.threads = params.threads_;
        p.demo = params.demo_;
        p.blocks_to_swap = params.blocks_to_swap_;
        p.max_device_memory = params.max_device_memory_;
        p.device_index = params.device_index_;
        Loras loras;
        if (!params.loras_.empty()) {
            wanrt_lora_list *list = nullptr;
            check(wanrt_lora_list_new(&list));
            loras.reset(list);
            for (const auto &l : params.loras_)
                check(wanrt_lora_list_add(list, l.first.c_str(), l.second));
            p.loras = list;
        }
        wanrt_pipeline *handle = nullptr;
        check(wanrt_pipeline_load(&p, &handle));
        return Pipeline(handle);
    }

    /// Runs one generation. `progress` (optional) sees every denoising step and cancels by
    /// returning Flow::Cancel; so does the stage callback of `params` (GenerateParams::on_stage).
    /// C callbacks set through params.raw() still get params.raw().user_data.
    Generation generate(const GenerateParams &params, const Progress &progress = nullptr) {
        wanrt_generate_params p = params.c_params();
        struct Context {
            const Progress *progress;
            const StageProgress *stage;
            wanrt_progress_fn c_progress;
            wanrt_stage_fn c_stage;
            void *c_user;
            const FrameCallback *frame;
            std::exception_ptr error;
        } context{&progress, &params.on_stage_, p.progress, p.stage_progress, p.user_data,
                  &params.on_frame_, nullptr};
        if (params.on_frame_) {
            p.frame_callback = [](void *user, uint32_t index, uint32_t count, const uint8_t *rgb,
                                  uint32_t width, uint32_t height) -> int32_t {
                auto *c = static_cast<Context *>(user);
                try {
                    return (*c->frame)(index, count, rgb, width, height) == Flow::Cancel ? 1 : 0;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            };
            p.frame_user_data = &context;
        }
        if (progress || p.progress) {
            p.progress = [](void *user, uint32_t step, uint32_t total, float sigma) -> int32_t {
                auto *c = static_cast<Context *>(user);
                if (!*c->progress) return c->c_progress(c->c_user, step, total, sigma);
                try {
                    return (*c->progress)(step, total, sigma) == Flow::Cancel ? 1 : 0;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            };
        }
        if (params.on_stage_ || p.stage_progress) {
            p.stage_progress = [](void *user, int32_t stage, uint32_t done,
                                  uint32_t total) -> int32_t {
                auto *c = static_cast<Context *>(user);
                if (!*c->stage) return c->c_stage(c->c_user, stage, done, total);
                try {
                    auto s = static_cast<wanrt_stage>(stage);
                    return (*c->stage)(s, done, total) == Flow::Cancel ? 1 : 0;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            };
        }
        p.user_data = &context;
        wanrt_generation *result = nullptr;
        wanrt_status status = wanrt_generate(live(), &p, &result);
        if (context.error) std::rethrow_exception(context.error);
        check(status);
        return Generation(result);
    }
    /// Changes the strength of LoRA `index` (in the order added) without reloading; needs
    /// lora_mode(WANRT_LORA_MODE_RUNTIME).
    void set_lora_strength(std::size_t index, float strength) {
        check(wanrt_pipeline_set_lora_strength(live(), index, strength));
    }
    /// The facts of the loaded models (dims, layers, weight dtype, maximum frames, LoRAs).
    wanrt_model_info info() const {
        wanrt_model_info out{};
        out.struct_size = sizeof out;
        check(wanrt_pipeline_info(live(), &out));
        return out;
    }
    /// The memory `params` would need and the plan chosen (VAE tiling, batched CFG), without
    /// generating; throws what generate() would throw before any work (bad request, OOM).
    wanrt_memory_estimate estimate(const GenerateParams &params) const {
        wanrt_generate_params p = params.c_params();
        wanrt_memory_estimate out{};
        out.struct_size = sizeof out;
        check(wanrt_pipeline_estimate(live(), &p, &out));
        return out;
    }
    /// The C handle, still owned by this object.
    wanrt_pipeline *get() const noexcept { return handle_.get(); }

private:
    explicit Pipeline(wanrt_pipeline *h) : handle_(h) {}
    wanrt_pipeline *live() const { return detail::live(get(), "Pipeline"); }
    std::unique_ptr<wanrt_pipeline, detail::Deleter<wanrt_pipeline, wanrt_pipeline_free>>
        handle_;
};

/// The per-step training callback: (step, total, loss, lr) -> Flow, after each optimizer step.
using TrainProgress = std::function<Flow(std::size_t step, std::size_t total, double loss, float lr)>;

/// A LoRA training run (wanrt_trainer) from `wanrt train`'s arguments (musubi-tuner's flags).
/// Move-only.
///     auto trainer = wanrt::Trainer({"--dit", "dit.safetensors", "--cache_directory", "cache",
///                                    "--output_dir", "out", "--output_name", "mine"});
///     bool finished = trainer.run([](std::size_t step, std::size_t, double loss, float) {
///         return step == 100 ? wanrt::Flow::Cancel : wanrt::Flow::Continue; });
class Trainer {
public:
    /// Opens the DiT and caches the arguments name (an unknown flag throws).
    explicit Trainer(const std::vector<std::string> &args) {
        std::vector<const char *> argv;
        for (const auto &a : args) argv.push_back(a.c_str());
        wanrt_trainer *h = nullptr;
        check(wanrt_trainer_new(argv.data(), argv.size(), &h));
        handle_.reset(h);
    }
    /// Takes the remaining steps; true when all were taken, false when `progress` cancelled
    /// (the LoRA of the steps taken is saved; a later run() continues). An exception thrown by
    /// `progress` cancels and is rethrown here.
    bool run(const TrainProgress &progress = nullptr) {
        struct Context {
            const TrainProgress *progress;
            std::exception_ptr error;
        } context{&progress, nullptr};
        wanrt_train_progress_fn fn = nullptr;
        if (progress) {
            fn = [](void *user, std::size_t step, std::size_t total, double loss,
                    float lr) -> int32_t {
                auto *c = static_cast<Context *>(user);
                try {
                    return (*c->progress)(step, total, loss, lr) == Flow::Cancel ? 1 : 0;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            };
        }
        wanrt_status status = wanrt_trainer_run(live(), fn, &context);
        if (context.error) std::rethrow_exception(context.error);
        if (status == WANRT_STATUS_CANCELLED) return false;
        check(status);
        return true;
    }
    /// Optimizer steps taken (with those of a resumed state).
    std::size_t steps_taken() const { return wanrt_trainer_steps_taken(live()); }
    /// Optimizer steps of the whole run.
    std::size_t total_steps() const { return wanrt_trainer_total_steps(live()); }
    /// The C handle, still owned by this object.
    wanrt_trainer *get() const noexcept { return handle_.get(); }

private:
    wanrt_trainer *live() const { return detail::live(get(), "Trainer"); }
    std::unique_ptr<wanrt_trainer, detail::Deleter<wanrt_trainer, wanrt_trainer_free>> handle_;
};

}  // namespace wanrt

#endif  // WANRT_HPP
