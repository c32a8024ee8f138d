//! `wanrt train`: LoRA training of the DiT on musubi-tuner cache files, with musubi's flag
//! names (`--network_dim` and `--network-dim` alike); the flags are [`TrainOptions`].

use wanrt::sampler::Flow;
use wanrt::train::{Ending, Event, TrainOptions};
use wanrt::Result;

/// Runs `wanrt train`; false on failure (reported on stderr).
pub fn run(args: &TrainOptions) -> bool {
    crate::report::reported("", || train(args)).is_some()
}

fn train(a: &TrainOptions) -> Result<()> {
    for note in a.notes() {
        eprintln!("{note}");
    }
    let mut run = a.start()?;
    let total = run.trainer().total_steps();
    let ending = run.run(&mut |event| {
        match event {
            Event::Step(r) => eprintln!(
                "step {}/{total} epoch {} loss {:.6} lr {:.3e}",
                r.step, r.epoch, r.loss, r.lr
            ),
            Event::Saved(path) => eprintln!("saved {}", path.display()),
        }
        Flow::Continue
    })?;
    let (Ending::Finished(out) | Ending::Cancelled(out)) = ending;
    println!("{}", out.display());
    Ok(())
}
