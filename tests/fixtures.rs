//! The fixture harness: runs every case under `$WANRT_FIXTURES` (default `../shared/fixtures`)
//! according to its `kind` and prints one line per case:
//!
//! ```text
//! fixture <case-name> <kind> rel_l2=<value> tol=<value>[ <tensor> max_abs=<value> tol=<value>] ok|FAIL
//! fixture <case-name> <kind> SKIP: <reason>
//! fixtures: N passed, M failed, K skipped
//! ```
//!
//! `rel_l2` is the worst over the case's expected tensors (named on FAIL); `tol` comes from the
//! case's `tolerance`. The process exits with 1 when a case fails or none ran. Arguments that do
//! not start with `-` keep only the cases whose name contains one of them
//! (`cargo test --test fixtures -- sampler_`); `WANRT_FIXTURES_VERBOSE=1` also prints every
//! tensor's error. `WANRT_ATTENTION=q8` runs the DiT cases' self-attention through the 8-bit
//! scheme's CPU emulation (said on the first line) and holds them to their
//! `tolerance.rel_l2_bf16_compute` (a case without one is skipped).
//!
//! With `WANRT_COMPUTE=bf16` the CPU backend emulates the CUDA path's bf16 activations
//! (`wanrt::backend::cpu::compute`): the harness says so first and applies each case's
//! `rel_l2_bf16_compute`, skipping the cases that have none.
//!
//! Adding a kind: write `tests/kinds/<kind>.rs` with a [`kinds::Runner`] and add it to
//! [`kinds::RUNNERS`].

mod common;
mod kinds;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use common::{find_cases, fixtures_root, Case};
use kinds::{Check, Stop};
use wanrt::model::dit::SelfAttention;

/// What became of one case.
enum Verdict {
    Pass,
    Fail,
    Skip,
}

fn run_case(case: &Case, verbose: bool, attention: SelfAttention, bf16_compute: bool) -> Verdict {
    let tag = format!("fixture {} {}", case.name, case.kind);
    let Some((_, runner)) = kinds::RUNNERS.iter().find(|(k, _)| *k == case.kind) else {
        println!("{tag} SKIP: kind `{}` is not implemented yet", case.kind);
        return Verdict::Skip;
    };
    let q8 = attention != SelfAttention::Exact && kinds::DIT_KINDS.contains(&case.kind.as_str());
    let reduced = if q8 {
        Some("the 8-bit attention")
    } else if bf16_compute {
        Some("bf16 compute")
    } else {
        None
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let tol = if let Some(mode) = reduced {
            case.bf16_compute_tolerance()?.ok_or_else(|| {
                Stop::Skip(format!("no `rel_l2_bf16_compute` tolerance for {mode}"))
            })?
        } else {
            case.rel_l2_tolerance()?
        };
        runner(case).map(|checks| (checks, tol))
    }))
    .unwrap_or_else(|_| Err(Stop::Fail("the runner panicked".into())));
    let (checks, tol) = match result {
        Ok(r) => r,
        Err(Stop::Skip(why)) => {
            println!("{tag} SKIP: {why}");
            return Verdict::Skip;
        }
        Err(Stop::Fail(why)) => {
            println!("{tag} FAIL: {why}");
            return Verdict::Fail;
        }
    };
    // NaN is the worst of all.
    let worst = checks.iter().max_by(|a, b| {
        let key = |c: &Check| {
            if c.rel_l2.is_nan() {
                f64::INFINITY
            } else {
                c.rel_l2
            }
        };
        key(a).total_cmp(&key(b))
    });
    let Some(worst) = worst else {
        println!("{tag} FAIL: the runner compared nothing");
        return Verdict::Fail;
    };
    if verbose {
        for c in &checks {
            eprintln!("  {} {}: rel_l2={:.3e}", case.name, c.name, c.rel_l2);
        }
    }
    // Max-abs-diff bounds, on the same line: ` <name> max_abs=<v> tol=<t>` each.
    let abs: String = checks
        .iter()
        .filter_map(|c| c.max_abs.map(|m| (c, m)))
        .map(|(c, m)| format!(" {} max_abs={:.3e} tol={}", c.name, m.value, m.tol))
        .collect();
    let abs_fail = checks.iter().find(|c| c.max_abs.is_some_and(|m| !m.ok()));
    if worst.rel_l2 <= tol && abs_fail.is_none() {
        println!("{tag} rel_l2={:.3e} tol={tol:e}{abs} ok", worst.rel_l2);
        Verdict::Pass
    } else {
        let culprit = match abs_fail {
            Some(c) if worst.rel_l2 <= tol => format!("{} max_abs", c.name),
            _ => worst.name.clone(),
        };
        println!(
            "{tag} rel_l2={:.3e} tol={tol:e}{abs} FAIL (worst: {culprit})",
            worst.rel_l2
        );
        Verdict::Fail
    }
}

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let verbose = std::env::var_os("WANRT_FIXTURES_VERBOSE").is_some_and(|v| v != "0");
    let attention = match kinds::dit_attention() {
        Ok(a) => a,
        Err(e) => {
            println!("fixtures: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bf16_compute = match wanrt::backend::cpu::compute::rounds_to_bf16() {
        Ok(b) => b,
        Err(e) => {
            println!("fixtures: {e}");
            return ExitCode::FAILURE;
        }
    };
    if attention != SelfAttention::Exact {
        println!(
            "fixtures: WANRT_ATTENTION: the DiT self-attention runs the 8-bit scheme emulated on \
             the CPU ({}); DiT cases are held to their rel_l2_bf16_compute",
            attention.describe()
        );
    }
    if bf16_compute {
        println!(
            "fixtures: bf16-compute mode (WANRT_COMPUTE=bf16): the CPU rounds to bf16 where the \
             CUDA path stores bf16; each case's rel_l2_bf16_compute applies, cases without one skip"
        );
    }
    let root = fixtures_root();
    let dirs = match find_cases(&root) {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            println!(
                "fixtures: no case.json under {} (set WANRT_FIXTURES)",
                root.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!(
                "fixtures: cannot read {}: {e} (set WANRT_FIXTURES)",
                root.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for dir in dirs {
        let case = match Case::load(&dir) {
            Ok(c) => c,
            Err(e) => {
                let name = dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                println!("fixture {name} ? FAIL: {e}");
                failed += 1;
                continue;
            }
        };
        if !filters.is_empty() && !filters.iter().any(|f| case.name.contains(f.as_str())) {
            continue;
        }
        match run_case(&case, verbose, attention, bf16_compute) {
            Verdict::Pass => passed += 1,
            Verdict::Fail => failed += 1,
            Verdict::Skip => skipped += 1,
        }
        let _ = std::io::stdout().flush();
    }
    println!("fixtures: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        return ExitCode::FAILURE;
    }
    if passed == 0 {
        if filters.is_empty() {
            println!("fixtures: no case ran");
            return ExitCode::FAILURE;
        }
        // `cargo test NAME` hands NAME to every test binary: a filter meant for another test
        // that matches no case is not a failure.
        println!("fixtures: no case matches {filters:?}");
    }
    ExitCode::SUCCESS
}
