// The C++ wrapper and the C ABI on the demo model (no files): moved-from objects, callbacks
// and their user data, VAE tiling, run-time LoRA strengths, the last error after a success.
// Built and run by tests/ffi.rs; prints the failed check and exits 1 on failure.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "wanrt.hpp"

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,    \
                         __LINE__, #cond);                                 \
            std::exit(1);                                                  \
        }                                                                  \
    } while (0)

static wanrt::GenerateParams small() {
    wanrt::GenerateParams p;
    p.prompt("a cat").size(48, 32).frames(1).steps(2).seed(3);
    return p;
}

/// Expects `f` to throw wanrt::Error with `status` and a message containing `text`.
template <typename F>
static void expect_error(F f, wanrt_status status, const char *text) {
    try {
        f();
    } catch (const wanrt::Error &e) {
        if (e.status() == status && std::strstr(e.what(), text)) return;
        std::fprintf(stderr, "unexpected error %d: %s\n", e.status(), e.what());
        std::exit(1);
    }
    std::fprintf(stderr, "no error (expected \"%s\")\n", text);
    std::exit(1);
}

struct Counter {
    int stages = 0;
};

static int32_t count_stage(void *user, int32_t, uint32_t, uint32_t) {
    static_cast<Counter *>(user)->stages++;
    return 0;
}

static int32_t fail_inside(void *, uint32_t, uint32_t, float) {
    // A failing call while wanrt_generate runs: its message must not outlive the success.
    CHECK(wanrt_generation_width(nullptr) == 0);
    return 0;
}

int main() {
    wanrt::check_abi();
    // No CUDA devices in a build without CUDA or on a machine without the driver; each one
    // listed is described.
    for (const auto &d : wanrt::list_devices())
        CHECK(!d.name.empty() && d.compute_major > 0 && d.total_memory > 0);
    // A trainer from a flag musubi does not have either throws naming it.
    expect_error([] { wanrt::Trainer({"--bogus"}); }, WANRT_STATUS_INVALID_ARGUMENT, "--bogus");
    auto pipe = wanrt::Pipeline::load(wanrt::PipelineParams().demo(true).threads(2));

    // The log callback receives the plan and the timings, also from the pipeline's threads;
    // an empty one silences the library again.
    std::mutex log_mutex;
    std::vector<std::pair<wanrt_log_level, std::string>> logged;
    wanrt::set_log_callback([&](wanrt_log_level level, const char *message) {
        std::lock_guard<std::mutex> lock(log_mutex);
        logged.emplace_back(level, message);
    });
    pipe.generate(small());
    wanrt::set_log_callback(nullptr);
    auto has = [&](wanrt_log_level level, const char *text) {
        for (auto &m : logged)
            if (m.first == level && m.second.find(text) != std::string::npos) return true;
        return false;
    };
    CHECK(has(WANRT_LOG_LEVEL_INFO, "VAE decode: tiling off"));
    CHECK(has(WANRT_LOG_LEVEL_INFO, "timings: text encoding"));
    CHECK(has(WANRT_LOG_LEVEL_DEBUG, "denoising step 2/2"));
    size_t before = logged.size();
    pipe.generate(small());
    CHECK(logged.size() == before);

    // The model's facts and a request's estimate, without generating; the estimate's plan is
    // the one generate() records.
    wanrt_model_info info = pipe.info();
    CHECK(info.dim > 0 && info.num_layers > 0 && info.num_heads > 0);
    CHECK(info.dim % info.num_heads == 0);
    CHECK(info.in_channels == 16 && info.out_channels == 16);
    CHECK(info.max_frames == 4093 && info.text_len > 0);
    CHECK(std::strcmp(info.weight_dtype, "f32") == 0);
    CHECK(info.lora_count == 0 && info.lora_mode == WANRT_LORA_MODE_MERGE);
    CHECK(info.demo == 1 && info.threads == 2);
    wanrt_memory_estimate whole = pipe.estimate(small());
    // (Models built in memory, like the demo, count no weights: see Pipeline::from_models.)
    CHECK(whole.denoising > 0 && whole.decoding > 0);
#ifdef __linux__
    CHECK(whole.available > 0); // MemAvailable
#endif
    CHECK(whole.peak == whole.weights + std::max(whole.denoising, whole.decoding));
    CHECK(whole.vae_tiling == WANRT_VAE_TILING_OFF && whole.vae_tile == 0);
    auto tiles = small();
    tiles.vae_tiles(4, 1);
    wanrt_memory_estimate in_tiles = pipe.estimate(tiles);
    CHECK(in_tiles.vae_tiling == WANRT_VAE_TILING_TILED && in_tiles.vae_tile == 4);
    CHECK(in_tiles.vae_tile_overlap == 1 && in_tiles.weights == whole.weights);
    auto big = small();
    big.frames(5000);
    expect_error([&] { pipe.estimate(big); }, WANRT_STATUS_INVALID_ARGUMENT, "too many");
    wanrt_model_info short_info{};
    short_info.struct_size = 8;
    CHECK(wanrt_pipeline_info(pipe.get(), &short_info) == WANRT_STATUS_INVALID_ARGUMENT);
    CHECK(std::strstr(wanrt_last_error(), "set it to sizeof(wanrt_model_info)"));
    CHECK(wanrt_pipeline_info(pipe.get(), nullptr) == WANRT_STATUS_INVALID_ARGUMENT);
    CHECK(wanrt_pipeline_estimate(nullptr, nullptr, &whole) == WANRT_STATUS_INVALID_ARGUMENT);

    // Frames streamed as they are decoded equal the result's; a frame callback cancels.
    auto streamed_params = small();
    streamed_params.frames(9);
    std::vector<uint8_t> streamed;
    uint32_t next = 0;
    streamed_params.on_frame([&](uint32_t index, uint32_t count, const uint8_t *rgb,
                                 uint32_t width, uint32_t height) {
        CHECK(index == next++ && count == 9 && width == 48 && height == 32);
        streamed.insert(streamed.end(), rgb, rgb + width * height * 3);
        return wanrt::Flow::Continue;
    });
    auto nine = pipe.generate(streamed_params);
    CHECK(next == 9);
    auto all = nine.frames();
    CHECK(streamed.size() == all.size &&
          std::equal(streamed.begin(), streamed.end(), all.begin()));
    next = 0;
    streamed_params.on_frame([&](uint32_t index, uint32_t, const uint8_t *, uint32_t, uint32_t) {
        next = index + 1;
        return index == 2 ? wanrt::Flow::Cancel : wanrt::Flow::Continue;
    });
    expect_error([&] { pipe.generate(streamed_params); }, WANRT_STATUS_CANCELLED, "cancelled");
    CHECK(next == 3);

    // A moved-from Generation or Pipeline throws wanrt::Error.
    auto video = pipe.generate(small());
    CHECK(video.frame_count() == 1);
    wanrt::Generation moved = std::move(video);
    CHECK(moved.json().find("\"demo\":true") != std::string::npos);
    expect_error([&] { (void)video.json(); }, WANRT_STATUS_INVALID_ARGUMENT,
                 "wanrt::Generation was moved from");
    expect_error([&] { (void)video.frames(); }, WANRT_STATUS_INVALID_ARGUMENT, "moved from");

    // A progress lambda leaves the user_data of a C stage callback alone.
    Counter counter;
    auto raw = small();
    raw.raw().stage_progress = count_stage;
    raw.raw().user_data = &counter;
    int steps = 0;
    pipe.generate(raw, [&](uint32_t, uint32_t, float) {
        steps++;
        return wanrt::Flow::Continue;
    });
    CHECK(steps == 3);
    CHECK(counter.stages > 3);

    // The stage callback has a setter, and cancels like the step callback.
    int stages = 0;
    auto staged = small();
    staged.on_stage([&](wanrt_stage stage, uint32_t, uint32_t) {
        stages++;
        return stage == WANRT_STAGE_DECODING ? wanrt::Flow::Cancel : wanrt::Flow::Continue;
    });
    expect_error([&] { pipe.generate(staged); }, WANRT_STATUS_CANCELLED, "cancelled");
    CHECK(stages > 3);

    // VAE tiles, recorded in the metadata; bad tiles refused before any work.
    auto tiled = small();
    tiled.vae_tiles(4, 1);
    CHECK(pipe.generate(tiled).json().find("\"vae_tiling\":\"4,1\"") != std::string::npos);
    CHECK(pipe.generate(small()).json().find("\"vae_tiling\":\"off\"") != std::string::npos);
    auto bad = small();
    bad.vae_tiles(4, 4);
    expect_error([&] { pipe.generate(bad); }, WANRT_STATUS_INVALID_ARGUMENT,
                 "larger than the overlap");

    // Strengths of LoRAs the pipeline does not have.
    expect_error([&] { pipe.set_lora_strength(0, 0.5f); }, WANRT_STATUS_INVALID_ARGUMENT,
                 "LoRA index 0: the pipeline has 0 LoRA(s)");

    // A successful call clears the last error, even one set while it ran (on this thread:
    // a pipeline without threads of its own runs the callbacks on the caller's).
    auto inner = small();
    inner.raw().progress = fail_inside;
    wanrt::Pipeline::load(wanrt::PipelineParams().demo(true)).generate(inner);
    CHECK(std::strcmp(wanrt_last_error(), "") == 0);

    // The demo takes no files; a moved-from Pipeline throws.
    expect_error([] { wanrt::Pipeline::load(wanrt::PipelineParams().demo(true).dit("x")); },
                 WANRT_STATUS_INVALID_ARGUMENT, "no model paths");
    wanrt::Pipeline other = std::move(pipe);
    expect_error([&] { pipe.generate(small()); }, WANRT_STATUS_INVALID_ARGUMENT,
                 "wanrt::Pipeline was moved from");
    CHECK(other.generate(small()).frame_count() == 1);
    std::puts("api: ok");
    return 0;
}
