//! `wanrt_trainer`: a LoRA training run ([`crate::train::TrainingRun`]) created from a
//! `wanrt train` argument list and run with a per-step callback that can cancel.

use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, TryLockError};

use super::params::{handle, write_out};
use super::status::{guard, guard_value, null_argument, wanrt_status};
use crate::error::{Error, Result};
use crate::sampler::Flow;
use crate::train::{Ending, Event, TrainOptions, TrainingRun};

/// A training run: the DiT, the cached items, the network being trained and its outputs.
/// Create it with `wanrt_trainer_new()`, run it with `wanrt_trainer_run()`, free it with
/// `wanrt_trainer_free()`. One thread at a time may run it (a second concurrent
/// `wanrt_trainer_run` returns `WANRT_STATUS_INVALID_ARGUMENT`).
pub struct wanrt_trainer {
    run: Mutex<TrainingRun>,
}

impl wanrt_trainer {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, TrainingRun>> {
        match self.run.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(Error::InvalidArgument(
                "the trainer is running on another thread".into(),
            )),
            Err(TryLockError::Poisoned(_)) => Err(Error::InvalidArgument(
                "the trainer failed with an internal error and cannot be used again".into(),
            )),
        }
    }
}

/// The per-step training callback: called after each optimizer step with the steps taken
/// (`step`, 1 to `total`), the step's loss and its learning rate. Return 0 to continue,
/// non-zero to cancel: the run then saves the LoRA of the steps taken (and its state with
/// `--save_state`) as at the end, and `wanrt_trainer_run` returns `WANRT_STATUS_CANCELLED`.
/// Runs on the thread that called `wanrt_trainer_run`; it must not unwind through the library.
pub type wanrt_train_progress_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        step: usize,
        total: usize,
        loss: f64,
        lr: f32,
    ) -> i32,
>;

/// Creates a training run in `*out` from the `count` strings at `args`: the arguments of
/// `wanrt train` (musubi-tuner's flags, e.g. `"--dit"`, `"dit.safetensors"`,
/// `"--cache_directory"`, `"cache"`, `"--output_dir"`, `"out"`, `"--output_name"`, `"mine"`,
/// `"--network_dim"`, `"4"`), without the program and subcommand names. Opens the DiT and the
/// cache folder, and with `--resume DIR` the saved state. The musubi flags wanrt ignores or
/// maps are reported through the log callback (warnings); an unknown flag is an error.
///
/// Returns `WANRT_STATUS_OK`; `WANRT_STATUS_INVALID_ARGUMENT` for a NULL or non-UTF-8
/// argument, an unknown flag or an unsupported value; `WANRT_STATUS_NOT_FOUND` or
/// `WANRT_STATUS_BAD_FILE` for a model, cache or state that cannot be read.
///
/// # Safety
/// `args` is NULL (only with `count` 0) or points to `count` NUL-terminated strings; `out` is
/// NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn wanrt_trainer_new(
    args: *const *const c_char,
    count: usize,
    out: *mut *mut wanrt_trainer,
) -> wanrt_status {
    guard("wanrt_trainer_new", || {
        if out.is_null() {
            return Err(null_argument("out"));
        }
        if args.is_null() && count > 0 {
            return Err(null_argument("args"));
        }
        let mut list = Vec::with_capacity(count);
        for i in 0..count {
            let p = *args.add(i);
            if p.is_null() {
                return Err(null_argument(&format!("args[{i}]")));
            }
            let s = CStr::from_ptr(p)
                .to_str()
                .map_err(|_| Error::InvalidArgument(format!("args[{i}] is not UTF-8")))?;
            list.push(s.to_string());
        }
        let options = TrainOptions::parse(&list)?;
        for note in options.notes() {
            log::warn!("{note}");
        }
        let run = options.start()?;
        let trainer = Box::new(wanrt_trainer {
            run: Mutex::new(run),
        });
        write_out(out, "out", Box::into_raw(trainer))
    })
}

/// Takes the remaining steps of `trainer`, writing the LoRAs, states and metrics its arguments
/// ask for, and calls `progress` (may be NULL) after each step with `user_data`.
///
/// Returns `WANRT_STATUS_OK` when every step was taken and the final LoRA written;
/// `WANRT_STATUS_CANCELLED` when `progress` cancelled (the LoRA of the steps taken is written:
/// a later run of the same trainer continues from there); `WANRT_STATUS_INVALID_ARGUMENT` for
/// a NULL trainer, one running on another thread, or one already done;
/// `WANRT_STATUS_BAD_FILE` when a cache cannot be read or an output cannot be written (for
/// example on a full disk: the files written before are left intact).
///
/// # Safety
/// `trainer` is NULL or a live trainer; `progress` is NULL or a function that may be called
/// with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn wanrt_trainer_run(
    trainer: *mut wanrt_trainer,
    progress: wanrt_train_progress_fn,
    user_data: *mut c_void,
) -> wanrt_status {
    guard("wanrt_trainer_run", || {
        let mut run = handle(trainer, "trainer")?.lock()?;
        if run.trainer().is_done() {
            return Err(Error::InvalidArgument(format!(
                "training is done: all {} steps were taken",
                run.trainer().total_steps()
            )));
        }
        let total = run.trainer().total_steps();
        let ending = run.run(&mut |event| match (event, progress) {
            (Event::Step(r), Some(f)) if f(user_data, r.step, total, r.loss, r.lr) != 0 => {
                Flow::Cancel
            }
            _ => Flow::Continue,
        })?;
        match ending {
            Ending::Finished(_) => Ok(()),
            Ending::Cancelled(_) => Err(Error::Cancelled),
        }
    })
}

/// The optimizer steps `trainer` has taken (with those of the state it resumed from); 0 when
/// `trainer` is NULL or running on another thread (`wanrt_last_error()` then says so).
///
/// # Safety
/// `trainer` is NULL or a live trainer.
#[no_mangle]
pub unsafe extern "C" fn wanrt_trainer_steps_taken(trainer: *const wanrt_trainer) -> usize {
    guard_value("wanrt_trainer_steps_taken", 0, || {
        Ok(handle(trainer, "trainer")?.lock()?.trainer().steps_taken())
    })
}

/// The optimizer steps of the whole run (`--max_train_steps`, or `--max_train_epochs` times the
/// items); 0 when `trainer` is NULL or running on another thread.
///
/// # Safety
/// `trainer` is NULL or a live trainer.
#[no_mangle]
pub unsafe extern "C" fn wanrt_trainer_total_steps(trainer: *const wanrt_trainer) -> usize {
    guard_value("wanrt_trainer_total_steps", 0, || {
        Ok(handle(trainer, "trainer")?.lock()?.trainer().total_steps())
    })
}

/// Frees `trainer`. NULL is a no-op. Freeing it while it runs, or twice, is undefined.
///
/// # Safety
/// `trainer` is NULL or a live trainer that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn wanrt_trainer_free(trainer: *mut wanrt_trainer) {
    guard_value("wanrt_trainer_free", (), || {
        if !trainer.is_null() {
            drop(Box::from_raw(trainer));
        }
        Ok(())
    })
}
