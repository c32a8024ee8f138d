/*
 * Misuse of the C API: every wrong call returns its documented status and message, nothing
 * crashes or leaks (tests/ffi.rs runs this under valgrind when it is installed).
 *
 * Usage: misuse DIT VAE T5 TOKENIZER DIT_CONFIG VAE_CONFIG T5_CONFIG SCRATCH_DIR LORA
 * (the tiny fixture models and a LoRA for them). Prints one line per failed check; exits 1 if any failed.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wanrt.h"

static int failures = 0;

/* Checks a status and that the last error contains `message` ("" means: is empty). */
static void expect(int line, wanrt_status got, wanrt_status want, const char *message) {
    const char *err = wanrt_last_error();
    if (got != want) {
        printf("misuse.c:%d: status %s, expected %s (%s)\n", line, wanrt_status_str(got),
               wanrt_status_str(want), err);
        failures++;
    } else if (message[0] ? !strstr(err, message) : err[0] != '\0') {
        printf("misuse.c:%d: message \"%s\", expected it to contain \"%s\"\n", line, err,
               message);
        failures++;
    }
}
#define EXPECT(call, status, message) expect(__LINE__, (call), (status), (message))
#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            printf("misuse.c:%d: %s is false (last error: %s)\n", __LINE__, #cond,      \
                   wanrt_last_error());                                                 \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

/* A newer header's struct: the current one followed by a field this library does not know. */
typedef struct {
    wanrt_generate_params p;
    uint64_t future_field;
} newer_generate_params;

struct callback_state {
    wanrt_pipeline *pipeline;
    const wanrt_generate_params *params;
    int calls;
    uint32_t cancel_at; /* cancel when step reaches this; UINT32_MAX: never */
    wanrt_status reentrant;
    char reentrant_error[256];
};

static int32_t on_step(void *user_data, uint32_t step, uint32_t total, float sigma) {
    struct callback_state *s = (struct callback_state *)user_data;
    wanrt_generation *inner = NULL;
    (void)total;
    (void)sigma;
    if (s->calls++ == 0) {
        /* Re-entering the busy pipeline from its own callback is refused, not deadlocked. */
        s->reentrant = wanrt_generate(s->pipeline, s->params, &inner);
        strncpy(s->reentrant_error, wanrt_last_error(), sizeof s->reentrant_error - 1);
        wanrt_generation_free(inner);
    }
    return step >= s->cancel_at;
}

static void *free_on_other_thread(void *handle) {
    wanrt_generation_free((wanrt_generation *)handle);
    return NULL;
}

static void *read_last_error(void *out) {
    *(int *)out = wanrt_last_error()[0] == '\0';
    return NULL;
}

int main(int argc, char **argv) {
    wanrt_pipeline_params load;
    wanrt_generate_params gen;
    wanrt_mp4_params mp4;
    newer_generate_params newer;
    wanrt_lora_list *loras = NULL;
    wanrt_pipeline *pipeline = NULL;
    wanrt_generation *result = NULL;
    struct callback_state state;
    char path[4096];
    float latent[16 * 4 * 6];
    size_t i, size = 0, shape[5];
    pthread_t thread;
    int fresh = 0;

    if (argc != 10) {
        fprintf(stderr, "usage: misuse DIT VAE T5 TOKENIZER DIT_CONFIG VAE_CONFIG T5_CONFIG DIR "
                        "LORA\n");
        return 2;
    }

    /* Versions and status names. */
    CHECK(wanrt_abi_version() == WANRT_ABI_VERSION);
    CHECK(wanrt_version() != NULL && strlen(wanrt_version()) >= 5);
    CHECK(!strcmp(wanrt_status_str(WANRT_STATUS_CANCELLED), "cancelled"));
    CHECK(!strcmp(wanrt_status_str(-3), "unknown status"));
    CHECK(!strcmp(wanrt_last_error(), ""));

    /* NULL out-pointers, params and handles. */
    EXPECT(wanrt_lora_list_new(NULL), WANRT_STATUS_INVALID_ARGUMENT,
           "wanrt_lora_list_new: invalid argument: out is NULL");
    EXPECT(wanrt_lora_list_add(NULL, argv[1], 1.0f), WANRT_STATUS_INVALID_ARGUMENT,
           "wanrt_lora_list_add: invalid argument: list is NULL");
    EXPECT(wanrt_pipeline_params_init(NULL, sizeof load), WANRT_STATUS_INVALID_ARGUMENT,
           "params is NULL");
    EXPECT(wanrt_pipeline_load(NULL, &pipeline), WANRT_STATUS_INVALID_ARGUMENT,
           "wanrt_pipeline_load: invalid argument: params is NULL");
    CHECK(pipeline == NULL);
    EXPECT(wanrt_generate_params_init(&gen, sizeof gen), WANRT_STATUS_OK, "");
    EXPECT(wanrt_generate(NULL, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "wanrt_generate: invalid argument: pipeline is NULL");
    CHECK(result == NULL);
    EXPECT(wanrt_generation_write_mp4(NULL, "x.mp4", NULL), WANRT_STATUS_INVALID_ARGUMENT,
           "generation is NULL");
    EXPECT(wanrt_generation_write_png_frames(NULL, "x"), WANRT_STATUS_INVALID_ARGUMENT,
           "generation is NULL");

    /* Accessors on NULL return 0 / NULL / -1 and leave a message. */
    CHECK(wanrt_generation_frame_count(NULL) == 0);
    CHECK(strstr(wanrt_last_error(), "wanrt_generation_frame_count: invalid argument: "
                                     "generation is NULL") != NULL);
    CHECK(wanrt_generation_width(NULL) == 0 && wanrt_generation_height(NULL) == 0);
    CHECK(wanrt_generation_frames(NULL, &size) == NULL);
    CHECK(wanrt_generation_latent(NULL, shape) == NULL);
    CHECK(wanrt_generation_json(NULL) == NULL);
    CHECK(wanrt_generation_seed(NULL) == -1);
    CHECK(wanrt_lora_list_count(NULL) == 0);

    /* free(NULL) is a no-op for every handle and keeps the last message. */
    EXPECT(wanrt_lora_list_new(NULL), WANRT_STATUS_INVALID_ARGUMENT, "out is NULL");
    wanrt_lora_list_free(NULL);
    wanrt_pipeline_free(NULL);
    wanrt_generation_free(NULL);
    CHECK(strstr(wanrt_last_error(), "out is NULL") != NULL);

    /* Each thread has its own message. */
    pthread_create(&thread, NULL, read_last_error, &fresh);
    pthread_join(thread, NULL);
    CHECK(fresh);

    /* Too-small, uninitialised and newer structs. */
    EXPECT(wanrt_pipeline_params_init(&load, 4), WANRT_STATUS_INVALID_ARGUMENT,
           "struct_size is 4");
    memset(&load, 0, sizeof load);
    EXPECT(wanrt_pipeline_load(&load, &pipeline), WANRT_STATUS_INVALID_ARGUMENT,
           "params->struct_size is 0, less than the smallest wanrt_pipeline_params");
    EXPECT(wanrt_mp4_params_init(&mp4, sizeof mp4 - 1), WANRT_STATUS_INVALID_ARGUMENT,
           "wanrt_mp4_params_init(&params, sizeof params)");
    EXPECT(wanrt_generate_params_init(&newer.p, sizeof newer), WANRT_STATUS_OK, "");
    CHECK(newer.p.struct_size == sizeof newer && newer.future_field == 0);
    newer.future_field = 1;
    newer.p.prompt = "a cat";
    EXPECT(wanrt_generate_params_preset(&newer.p, "distill"), WANRT_STATUS_INVALID_ARGUMENT,
           "sets fields this library");
    newer.future_field = 0;
    EXPECT(wanrt_generate_params_preset(&newer.p, "distill"), WANRT_STATUS_OK, "");
    CHECK(newer.p.steps == 8 && newer.p.guidance_scale == 1.0 && newer.p.nag_scale > 1.0f);
    CHECK(newer.future_field == 0);
    EXPECT(wanrt_generate_params_preset(&newer.p, "fast"), WANRT_STATUS_INVALID_ARGUMENT,
           "unknown preset `fast`");

    /* LoRA lists: missing files, bad strengths. */
    EXPECT(wanrt_lora_list_new(&loras), WANRT_STATUS_OK, "");
    EXPECT(wanrt_lora_list_add(loras, "/nonexistent/lora.safetensors", 1.0f),
           WANRT_STATUS_NOT_FOUND, "/nonexistent/lora.safetensors");
    EXPECT(wanrt_lora_list_add(loras, argv[1], 0.0f / 0.0f), WANRT_STATUS_INVALID_ARGUMENT,
           "is not finite");
    EXPECT(wanrt_lora_list_add(loras, "", 1.0f), WANRT_STATUS_INVALID_ARGUMENT, "path is empty");
    CHECK(wanrt_lora_list_count(loras) == 0);
    EXPECT(wanrt_lora_list_add(loras, argv[9], 0.5f), WANRT_STATUS_OK, "");
    CHECK(wanrt_lora_list_count(loras) == 1);

    /* Loading: a missing file, a file that is not a model, a bad device, then the real models
       with the LoRA (the list may be freed as soon as loading returns). */
    EXPECT(wanrt_pipeline_params_init(&load, sizeof load), WANRT_STATUS_OK, "");
    load.dit = "/nonexistent/dit.safetensors";
    load.vae = argv[2];
    load.t5 = argv[3];
    load.tokenizer = argv[4];
    EXPECT(wanrt_pipeline_load(&load, &pipeline), WANRT_STATUS_NOT_FOUND,
           "/nonexistent/dit.safetensors");
    load.dit = argv[4];
    EXPECT(wanrt_pipeline_load(&load, &pipeline), WANRT_STATUS_BAD_FILE, argv[4]);
    load.dit = argv[1];
    load.dit_config = argv[5];
    load.vae_config = argv[6];
    load.t5_config = argv[7];
    load.device = 7;
    EXPECT(wanrt_pipeline_load(&load, &pipeline), WANRT_STATUS_INVALID_ARGUMENT,
           "params->device 7 is not a wanrt_device");
    load.device = WANRT_DEVICE_CPU;
    EXPECT(wanrt_pipeline_load(&load, NULL), WANRT_STATUS_INVALID_ARGUMENT, "out is NULL");
    load.loras = loras;
    EXPECT(wanrt_pipeline_load(&load, &pipeline), WANRT_STATUS_OK, "");
    wanrt_lora_list_free(loras);
    if (!pipeline) {
        printf("misuse.c: no pipeline, stopping\n");
        return 1;
    }

    /* Invalid requests fail before any work, with the field and the reason. */
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "params->prompt is NULL");
    gen.prompt = "a cat";
    gen.width = 40;
    gen.height = 32;
    gen.frames = 1;
    gen.steps = 2;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "width 40 is not a multiple of 16");
    gen.width = 48;
    gen.frames = 2;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT, "1 + 4k");
    gen.frames = 1;
    gen.solver = 9;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "params->solver 9 is not a wanrt_solver");
    gen.solver = WANRT_SOLVER_EULER;
    gen.seed = -5;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "params->seed -5 is out of range");
    gen.seed = 7;
    gen.width = 16384;
    gen.height = 16384;
    gen.frames = 81;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_OUT_OF_MEMORY,
           "with 81 frames needs about");
    gen.width = 48;
    gen.height = 32;
    gen.frames = 1;
    gen.initial_latent_len = 3;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "params->initial_latent is NULL");
    /* A NaN or an infinity in the initial latent ([1, 16, 1, 4, 6] for 48x32, 1 frame). */
    for (i = 0; i < 16 * 4 * 6; i++) latent[i] = 0.5f;
    latent[100] = NAN;
    gen.initial_latent = latent;
    gen.initial_latent_len = 16 * 4 * 6;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "holds NaN at element 100");
    latent[100] = -INFINITY;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "holds -inf at element 100");
    gen.initial_latent = NULL;
    gen.initial_latent_len = 0;
    gen.width = 0;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_INVALID_ARGUMENT,
           "width 0: the width must be a multiple of 16 from 16 to 16384");
    gen.width = 48;
    EXPECT(wanrt_generate(pipeline, &gen, NULL), WANRT_STATUS_INVALID_ARGUMENT, "out is NULL");
    CHECK(result == NULL);

    /* A cancelling callback: the call stops with CANCELLED and writes no result. The first
       callback also re-enters the pipeline, which is refused as busy. */
    memset(&state, 0, sizeof state);
    state.pipeline = pipeline;
    state.params = &gen;
    state.cancel_at = 1;
    gen.progress = on_step;
    gen.user_data = &state;
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_CANCELLED,
           "wanrt_generate: cancelled");
    CHECK(result == NULL);
    CHECK(state.calls == 2); /* step 0 (before the first step) and step 1, which cancels */
    CHECK(state.reentrant == WANRT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(state.reentrant_error, "pipeline is busy") != NULL);

    /* Calling after an error: the same pipeline and params work once the cause is gone. */
    state.cancel_at = UINT32_MAX;
    state.calls = 1; /* no re-entry this time */
    EXPECT(wanrt_generate(pipeline, &gen, &result), WANRT_STATUS_OK, "");
    CHECK(result != NULL);
    CHECK(state.calls == 1 + 3); /* steps 0, 1, 2 */
    CHECK(wanrt_generation_frame_count(result) == 1);
    CHECK(wanrt_generation_width(result) == 48 && wanrt_generation_height(result) == 32);
    CHECK(wanrt_generation_frames(result, &size) != NULL && size == 48 * 32 * 3);
    CHECK(wanrt_generation_latent(result, shape) != NULL);
    CHECK(shape[0] == 1 && shape[1] == 16 && shape[2] == 1 && shape[3] == 4 && shape[4] == 6);
    CHECK(wanrt_generation_seed(result) == 7);
    CHECK(strstr(wanrt_generation_json(result), "\"seed\":7") != NULL);
    CHECK(strstr(wanrt_generation_json(result), "\"strength\":0.5") != NULL);

    /* Writers: bad options and unwritable paths are errors, not crashes. */
    EXPECT(wanrt_mp4_params_init(&mp4, sizeof mp4), WANRT_STATUS_OK, "");
    mp4.qp = 99;
    snprintf(path, sizeof path, "%s/out.mp4", argv[8]);
    EXPECT(wanrt_generation_write_mp4(result, path, &mp4), WANRT_STATUS_INVALID_ARGUMENT,
           "params->qp 99 is not in 0..=51");
    EXPECT(wanrt_generation_write_mp4(result, NULL, NULL), WANRT_STATUS_INVALID_ARGUMENT,
           "path is NULL");
    {
        wanrt_status st = wanrt_generation_write_mp4(result, "/nonexistent/dir/out.mp4", NULL);
        CHECK(st == WANRT_STATUS_NOT_FOUND || st == WANRT_STATUS_BAD_FILE);
        CHECK(strstr(wanrt_last_error(), "/nonexistent/dir/out.mp4") != NULL);
    }
    EXPECT(wanrt_generation_write_mp4(result, path, NULL), WANRT_STATUS_OK, "");
    snprintf(path, sizeof path, "%s/frames", argv[8]);
    EXPECT(wanrt_generation_write_png_frames(result, path), WANRT_STATUS_OK, "");

    /* Handles may be freed from another thread. */
    pthread_create(&thread, NULL, free_on_other_thread, result);
    pthread_join(thread, NULL);
    wanrt_pipeline_free(pipeline);

    if (failures) printf("misuse: %d check(s) failed\n", failures);
    else printf("misuse: all checks passed\n");
    return failures ? 1 : 0;
}
