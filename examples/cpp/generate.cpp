// generate.cpp: text to video through the C++ wrapper (bindings/cpp/wanrt.hpp).
//
// Build against a cargo build:
//   c++ -std=c++17 -I include -I bindings/cpp examples/cpp/generate.cpp
//       -L target/release -lwanrt -o generate
//
// Takes the same options as examples/c/generate.c (see there), except --lora FILE:STRENGTH
// and --solver, which are left out to keep it short.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "wanrt.hpp"

namespace {

std::vector<char> read_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + path);
    return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string &path, const void *data, std::size_t size) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char *>(data), static_cast<std::streamsize>(size));
    if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char **argv) {
    std::map<std::string, std::string> args;
    for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
    auto has = [&](const char *k) { return args.count(k) > 0; };
    try {
        wanrt::check_abi();
        wanrt::PipelineParams load;
        if (has("--models")) load.models_dir(args["--models"]);
        if (has("--dit")) load.dit(args["--dit"]);
        if (has("--vae")) load.vae(args["--vae"]);
        if (has("--t5")) load.t5(args["--t5"]);
        if (has("--tokenizer")) load.tokenizer(args["--tokenizer"]);
        if (has("--dit-config")) load.dit_config(args["--dit-config"]);
        if (has("--vae-config")) load.vae_config(args["--vae-config"]);
        if (has("--t5-config")) load.t5_config(args["--t5-config"]);
        auto pipeline = wanrt::Pipeline::load(load);

        wanrt::GenerateParams params;
        if (has("--preset")) params.preset(args["--preset"]);
        params.prompt(args["--prompt"]);
        if (has("--negative-prompt")) params.negative_prompt(args["--negative-prompt"]);
        auto u32 = [&](const char *k) { return static_cast<uint32_t>(std::stoul(args[k])); };
        if (has("--width") && has("--height")) params.size(u32("--width"), u32("--height"));
        if (has("--frames")) params.frames(u32("--frames"));
        if (has("--steps")) params.steps(u32("--steps"));
        if (has("--shift")) params.shift(std::stod(args["--shift"]));
        if (has("--cfg")) params.guidance_scale(std::stod(args["--cfg"]));
        if (has("--seed")) params.seed(std::stoll(args["--seed"]));
        if (has("--latent-raw")) {
            std::vector<char> bytes = read_file(args["--latent-raw"]);
            std::vector<float> x(bytes.size() / sizeof(float));
            std::memcpy(x.data(), bytes.data(), x.size() * sizeof(float));
            params.initial_latent(std::move(x));
        }

        auto video = pipeline.generate(params, [](uint32_t step, uint32_t total, float sigma) {
            std::cerr << "generate: step " << step << "/" << total << " sigma " << sigma << "\n";
            return wanrt::Flow::Continue;
        });
        std::cerr << "generate: " << video.frame_count() << " frames of " << video.width() << "x"
                  << video.height() << ", seed " << video.seed() << "\n";

        if (has("--out")) video.write_mp4(args["--out"]);
        if (has("--frames-dir")) video.write_png_frames(args["--frames-dir"]);
        if (has("--frames-raw")) {
            auto f = video.frames();
            write_file(args["--frames-raw"], f.data, f.size);
        }
        if (has("--latent-out")) {
            auto l = video.latent();
            write_file(args["--latent-out"], l.data, l.size * sizeof(float));
        }
        return 0;
    } catch (const wanrt::Error &e) {
        std::cerr << "generate: " << wanrt_status_str(e.status()) << ": " << e.what() << "\n";
    } catch (const std::exception &e) {
        std::cerr << "generate: " << e.what() << "\n";
    }
    return 1;
}
