/*
 * LoRA training through the C API: a trainer made from a `wanrt train` argument list, run with
 * a progress callback that cancels after step 2 (the run saves the LoRA of those steps), and
 * the misuse of the trainer functions.
 *
 * Usage: train ARGS... (the arguments of `wanrt train`, for a run of 5 steps). Prints one line
 * per failed check; exits 1 if any failed. tests/ffi.rs then checks the LoRA left behind.
 */
#include <stdio.h>
#include <string.h>

#include "wanrt.h"

static int failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            printf("train.c:%d: %s failed (%s)\n", __LINE__, #cond, wanrt_last_error()); \
            failures++;                                                              \
        }                                                                            \
    } while (0)

struct seen {
    size_t steps;
    size_t total;
    double loss;
};

/* Records the step and cancels after the second. */
static int on_step(void *user_data, size_t step, size_t total, double loss, float lr) {
    struct seen *s = user_data;
    s->steps = step;
    s->total = total;
    s->loss = loss;
    printf("step %zu/%zu loss %.9g lr %g\n", step, total, loss, (double)lr);
    return step == 2;
}

int main(int argc, char **argv) {
    wanrt_trainer *trainer = NULL;
    wanrt_status status =
        wanrt_trainer_new((const char *const *)(argv + 1), (size_t)(argc - 1), &trainer);
    CHECK(status == WANRT_STATUS_OK);
    if (status != WANRT_STATUS_OK) {
        return 1;
    }
    CHECK(wanrt_trainer_total_steps(trainer) == 5);
    struct seen seen = {0, 0, 0.0};
    CHECK(wanrt_trainer_run(trainer, on_step, &seen) == WANRT_STATUS_CANCELLED);
    CHECK(seen.steps == 2 && seen.total == 5 && seen.loss > 0.0);
    CHECK(wanrt_trainer_steps_taken(trainer) == 2);
    wanrt_trainer_free(trainer);

    /* Misuse: NULL arguments, an unknown flag, a missing model; NULL frees are no-ops. */
    trainer = NULL;
    CHECK(wanrt_trainer_new(NULL, 1, &trainer) == WANRT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(wanrt_last_error(), "args is NULL") != NULL);
    const char *bogus[] = {"--bogus"};
    CHECK(wanrt_trainer_new(bogus, 1, &trainer) == WANRT_STATUS_INVALID_ARGUMENT);
    CHECK(strstr(wanrt_last_error(), "--bogus") != NULL);
    const char *missing[] = {"--dit", "/nonexistent/dit.safetensors", "--cache_directory", "c",
                             "--output_dir", "o", "--output_name", "n"};
    CHECK(wanrt_trainer_new(missing, 8, &trainer) != WANRT_STATUS_OK);
    CHECK(trainer == NULL);
    CHECK(wanrt_trainer_run(NULL, NULL, NULL) == WANRT_STATUS_INVALID_ARGUMENT);
    CHECK(wanrt_trainer_steps_taken(NULL) == 0);
    wanrt_trainer_free(NULL);
    return failures ? 1 : 0;
}
