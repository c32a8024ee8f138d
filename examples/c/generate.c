/*
 * generate.c: text to video through the wanrt C API.
 *
 * Build against a cargo build (or use `pkg-config --cflags --libs wanrt` after `cargo cinstall`):
 *   cc -std=c99 -I include examples/c/generate.c -L target/release -lwanrt -o generate
 *
 * Usage:
 *   generate (--models DIR | --dit F --vae F --t5 F --tokenizer F) [--dit-config F]
 *            [--vae-config F] [--t5-config F] [--lora FILE[:STRENGTH]]... --prompt TEXT
 *            [--negative-prompt TEXT] [--preset quality|distill] [--width N] [--height N]
 *            [--frames N] [--steps N] [--solver unipc|dpmpp|euler|lcm] [--shift X] [--cfg X]
 *            [--seed N] [--latent-raw FILE] [--out FILE.mp4] [--frames-dir DIR]
 *            [--frames-raw FILE] [--latent-out FILE]
 *
 * --latent-raw reads the initial latent x_T as raw float32 values (host byte order, shape
 * [1, 16, (frames-1)/4+1, height/8, width/8]); --frames-raw and --latent-out write the frames
 * (uint8 RGB) and the final latent (float32) as raw bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wanrt.h"

#define MAX_SLOTS 16

/* Prints the failed call's status and message, then returns 1 (the exit code). */
static int fail(const char *what, wanrt_status status) {
    fprintf(stderr, "generate: %s failed (%s): %s\n", what, wanrt_status_str(status),
            wanrt_last_error());
    return 1;
}

/* Reads a whole file; returns NULL on error. */
static void *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    void *data = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = malloc(n > 0 ? (size_t)n : 1);
        if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
            free(data);
            data = NULL;
        }
        *size = (size_t)n;
    }
    fclose(f);
    return data;
}

static int write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, size, f) == size;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "generate: cannot write %s\n", path);
    return ok;
}

/* The progress callback: one line per denoising step; returning non-zero would cancel. */
static int32_t on_step(void *user_data, uint32_t step, uint32_t total, float sigma) {
    const char *name = (const char *)user_data;
    fprintf(stderr, "%s: step %u/%u sigma %.4f\n", name, step, total, sigma);
    return 0;
}

int main(int argc, char **argv) {
    wanrt_pipeline_params load;
    wanrt_generate_params gen;
    wanrt_lora_list *loras = NULL;
    wanrt_pipeline *pipeline = NULL;
    wanrt_generation *result = NULL;
    const char *out = NULL, *frames_dir = NULL, *frames_raw = NULL, *latent_out = NULL;
    const char *latent_raw = NULL, *preset = NULL;
    char *lora_args[MAX_SLOTS];
    int lora_count = 0, rc = 1, i;
    void *latent = NULL;
    wanrt_status st;

    if (wanrt_abi_version() != WANRT_ABI_VERSION) {
        fprintf(stderr, "generate: libwanrt has ABI %u, this program was built for %u\n",
                wanrt_abi_version(), (unsigned)WANRT_ABI_VERSION);
        return 1;
    }
    if ((st = wanrt_pipeline_params_init(&load, sizeof load)) != WANRT_STATUS_OK ||
        (st = wanrt_generate_params_init(&gen, sizeof gen)) != WANRT_STATUS_OK)
        return fail("params init", st);

    /* A preset sets the sampling fields; the explicit flags below override it. */
    for (i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--preset")) preset = argv[i + 1];
    if (preset && (st = wanrt_generate_params_preset(&gen, preset)) != WANRT_STATUS_OK)
        return fail("wanrt_generate_params_preset", st);

    for (i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) {
            fprintf(stderr, "generate: %s needs a value\n", flag);
            return 2;
        }
        i++;
        if (!strcmp(flag, "--models")) load.models_dir = value;
        else if (!strcmp(flag, "--dit")) load.dit = value;
        else if (!strcmp(flag, "--vae")) load.vae = value;
        else if (!strcmp(flag, "--t5")) load.t5 = value;
        else if (!strcmp(flag, "--tokenizer")) load.tokenizer = value;
        else if (!strcmp(flag, "--dit-config")) load.dit_config = value;
        else if (!strcmp(flag, "--vae-config")) load.vae_config = value;
        else if (!strcmp(flag, "--t5-config")) load.t5_config = value;
        else if (!strcmp(flag, "--lora") && lora_count < MAX_SLOTS) lora_args[lora_count++] = argv[i];
        else if (!strcmp(flag, "--prompt")) gen.prompt = value;
        else if (!strcmp(flag, "--negative-prompt")) gen.negative_prompt = value;
        else if (!strcmp(flag, "--preset")) continue;
        else if (!strcmp(flag, "--width")) gen.width = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--height")) gen.height = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--frames")) gen.frames = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--steps")) gen.steps = (uint32_t)strtoul(value, NULL, 10);
        else if (!strcmp(flag, "--shift")) gen.shift = strtod(value, NULL);
        else if (!strcmp(flag, "--cfg")) gen.guidance_scale = strtod(value, NULL);
        else if (!strcmp(flag, "--seed")) gen.seed = strtoll(value, NULL, 10);
        else if (!strcmp(flag, "--latent-raw")) latent_raw = value;
        else if (!strcmp(flag, "--out")) out = value;
        else if (!strcmp(flag, "--frames-dir")) frames_dir = value;
        else if (!strcmp(flag, "--frames-raw")) frames_raw = value;
        else if (!strcmp(flag, "--latent-out")) latent_out = value;
        else if (!strcmp(flag, "--solver")) {
            if (!strcmp(value, "unipc")) gen.solver = WANRT_SOLVER_UNIPC;
            else if (!strcmp(value, "dpmpp")) gen.solver = WANRT_SOLVER_DPMPP;
            else if (!strcmp(value, "euler")) gen.solver = WANRT_SOLVER_EULER;
            else if (!strcmp(value, "lcm")) gen.solver = WANRT_SOLVER_LCM;
            else gen.solver = -1; /* the library reports it */
        } else {
            fprintf(stderr, "generate: unknown option %s\n", flag);
            return 2;
        }
    }
    if (lora_count > 0) {
        if ((st = wanrt_lora_list_new(&loras)) != WANRT_STATUS_OK) return fail("lora list", st);
        for (i = 0; i < lora_count; i++) {
            char *colon = strrchr(lora_args[i], ':');
            float strength = 1.0f;
            if (colon) {
                *colon = '\0';
                strength = strtof(colon + 1, NULL);
            }
            if ((st = wanrt_lora_list_add(loras, lora_args[i], strength)) != WANRT_STATUS_OK) {
                rc = fail("wanrt_lora_list_add", st);
                goto done;
            }
        }
        load.loras = loras;
    }
    if (latent_raw) {
        size_t size = 0;
        latent = read_file(latent_raw, &size);
        if (!latent) {
            fprintf(stderr, "generate: cannot read %s\n", latent_raw);
            goto done;
        }
        gen.initial_latent = (const float *)latent;
        gen.initial_latent_len = size / sizeof(float);
    }

    if ((st = wanrt_pipeline_load(&load, &pipeline)) != WANRT_STATUS_OK) {
        rc = fail("wanrt_pipeline_load", st);
        goto done;
    }
    gen.progress = on_step;
    gen.user_data = (void *)"generate";
    if ((st = wanrt_generate(pipeline, &gen, &result)) != WANRT_STATUS_OK) {
        rc = fail("wanrt_generate", st);
        goto done;
    }
    fprintf(stderr, "generate: %u frames of %ux%u, seed %lld\n",
            wanrt_generation_frame_count(result), wanrt_generation_width(result),
            wanrt_generation_height(result), (long long)wanrt_generation_seed(result));

    if (out && (st = wanrt_generation_write_mp4(result, out, NULL)) != WANRT_STATUS_OK) {
        rc = fail("wanrt_generation_write_mp4", st);
        goto done;
    }
    if (frames_dir &&
        (st = wanrt_generation_write_png_frames(result, frames_dir)) != WANRT_STATUS_OK) {
        rc = fail("wanrt_generation_write_png_frames", st);
        goto done;
    }
    if (frames_raw) {
        size_t size = 0;
        const uint8_t *frames = wanrt_generation_frames(result, &size);
        if (!write_file(frames_raw, frames, size)) goto done;
    }
    if (latent_out) {
        size_t shape[5], count;
        const float *data = wanrt_generation_latent(result, shape);
        count = shape[0] * shape[1] * shape[2] * shape[3] * shape[4];
        if (!write_file(latent_out, data, count * sizeof *data)) goto done;
    }
    rc = 0;

done:
    /* Every free function accepts NULL. */
    wanrt_generation_free(result);
    wanrt_pipeline_free(pipeline);
    wanrt_lora_list_free(loras);
    free(latent);
    return rc;
}
