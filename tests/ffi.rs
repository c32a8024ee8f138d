//! The C ABI as C and C++ programs see it: `examples/c/generate.c`, `examples/cpp/generate.cpp`
//! (through `bindings/cpp/wanrt.hpp`), the misuse checks of `tests/c/misuse.c` and the wrapper
//! and API checks of `tests/cpp/api.cpp` (on the demo model) are compiled
//! with the system `cc`/`c++` against `include/wanrt.h` and the cdylib this test was built with,
//! then run against the fixture models. The examples must reproduce the `pipeline_t2v` case
//! (its initial latent in, its frames and latent out, within the case's tolerance); the misuse
//! program runs under `valgrind --error-exitcode=1` when valgrind is installed.
//!
//! The log callback is also checked from Rust, through the `extern "C"` function itself.
//!
//! Run it with a target dir of your own when several checkouts share one, since the cdylib's
//! path in a shared target dir is the same for all of them.

mod common;

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{f64_data, fixtures_root, rel_l2, tensor, Case};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The folder of the `libwanrt.so` built with this test: `target/<profile>/deps`, where cargo
/// puts the library's artifacts and this test binary.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("target/<profile>/deps");
    let lib = dir.join(format!(
        "{}wanrt{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(lib.is_file(), "{} was not built", lib.display());
    dir.to_path_buf()
}

/// Compiles `sources` into the program `out` with `compiler` ("cc" or "c++"), against the
/// header and the cdylib, with warnings as errors.
fn compile(compiler: &str, std: &str, sources: &[&str], out: &Path) {
    let lib = lib_dir();
    let output = Command::new(compiler)
        .arg(format!("-std={std}"))
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-pthread"])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .args(sources.iter().map(|s| root().join(s)))
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lwanrt")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{compiler}`: {e}"));
    assert!(
        output.status.success(),
        "{compiler} failed on {sources:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `program`, loading `libwanrt.so` from [`lib_dir`]: cargo's `LD_LIBRARY_PATH` also
/// names `target/<profile>`, where an older `cargo build` may have left another `libwanrt.so`,
/// and it takes precedence over the programs' run path.
fn run(program: &Path, args: &[String]) -> Output {
    let output = Command::new(program)
        .args(args)
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn pipeline_case() -> Case {
    let dir = fixtures_root().join("cases/pipeline_t2v");
    Case::load(&dir).unwrap_or_else(|e| panic!("the pipeline_t2v fixture case: {e}"))
}

fn path_arg(case: &Case, key: &str) -> String {
    case.path(key).unwrap().display().to_string()
}

/// The example's command line for the case: models, prompts, sampling, the initial latent
/// (written raw into `dir`) and where to write the raw frames and latent.
fn example_args(case: &Case, dir: &Path) -> Vec<String> {
    let inputs = case.tensors("inputs").unwrap();
    let x_t = tensor(&inputs, "x_T").unwrap().to_f32_vec().unwrap();
    let latent_raw = dir.join("x_T.f32");
    std::fs::write(&latent_raw, f32_bytes(&x_t)).unwrap();
    let mut args = Vec::new();
    for (flag, key) in [
        ("--dit", "dit"),
        ("--dit-config", "dit_config"),
        ("--vae", "vae"),
        ("--vae-config", "vae_config"),
        ("--t5", "t5"),
        ("--t5-config", "t5_config"),
        ("--tokenizer", "tokenizer"),
    ] {
        args.extend([flag.to_string(), path_arg(case, key)]);
    }
    for (flag, key) in [
        ("--prompt", "prompt"),
        ("--negative-prompt", "negative_prompt"),
    ] {
        args.extend([flag.to_string(), case.str(key).unwrap().to_string()]);
    }
    assert_eq!(
        case.str("solver").unwrap(),
        "unipc",
        "the examples use the default solver"
    );
    for (flag, key) in [
        ("--steps", "steps"),
        ("--shift", "shift"),
        ("--cfg", "guidance_scale"),
        ("--frames", "frames"),
        ("--width", "width"),
        ("--height", "height"),
    ] {
        args.extend([flag.to_string(), case.f64(key).unwrap().to_string()]);
    }
    let out = |name: &str| dir.join(name).display().to_string();
    args.extend([
        "--latent-raw".into(),
        latent_raw.display().to_string(),
        "--frames-raw".into(),
        out("frames.u8"),
        "--latent-out".into(),
        out("latent.f32"),
        "--out".into(),
        out("video.mp4"),
        "--frames-dir".into(),
        out("frames"),
    ]);
    args
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// Compares what an example wrote into `dir` with the case's expected frames and latent.
fn check_outputs(case: &Case, dir: &Path) {
    let expected = case.tensors("expected").unwrap();
    let frames = std::fs::read(dir.join("frames.u8")).unwrap();
    let want = tensor(&expected, "frames").unwrap();
    let want_frames = f64_data(want).unwrap();
    assert_eq!(frames.len(), want_frames.len(), "frame bytes");
    let max_diff = frames
        .iter()
        .zip(&want_frames)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);
    let tol = case.json["tolerance"]["frames_max_abs_diff"]
        .as_f64()
        .unwrap();
    assert!(
        max_diff <= tol,
        "frames differ by up to {max_diff} (tolerance {tol})"
    );

    let latent: Vec<f64> = std::fs::read(dir.join("latent.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_ne_bytes(b.try_into().unwrap())))
        .collect();
    let want_latent = f64_data(tensor(&expected, "latent").unwrap()).unwrap();
    let err = rel_l2(&latent, &want_latent);
    let tol = case.rel_l2_tolerance().unwrap();
    assert!(err <= tol, "latent rel_l2 {err:.3e} > {tol:.1e}");

    let frame_count = case.f64("frames").unwrap() as usize;
    let pngs = std::fs::read_dir(dir.join("frames")).unwrap().count();
    assert_eq!(pngs, frame_count, "PNG frames written");
    let info = wanrt::video::probe(&dir.join("video.mp4")).unwrap();
    assert_eq!(info.frames, frame_count);
    let metadata = info.metadata.expect("the MP4 records the parameters");
    assert!(metadata.contains(case.str("prompt").unwrap()), "{metadata}");
}

#[test]
fn c_example_reproduces_the_pipeline_case() {
    let case = pipeline_case();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("generate_c");
    compile("cc", "c99", &["examples/c/generate.c"], &exe);
    let out = run(&exe, &example_args(&case, dir.path()));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("step 4/4"), "progress callback: {log}");
    check_outputs(&case, dir.path());
}

#[test]
fn cpp_example_reproduces_the_pipeline_case() {
    let case = pipeline_case();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("generate_cpp");
    compile("c++", "c++17", &["examples/cpp/generate.cpp"], &exe);
    let out = run(&exe, &example_args(&case, dir.path()));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("step 4/4"), "progress callback: {log}");
    check_outputs(&case, dir.path());
}

/// NULL handles and out-pointers, NULL, too-small and newer structs, free(NULL), a cancelling
/// callback, a re-entrant call on a busy pipeline, calls after an error, bad requests and
/// unwritable paths: each returns its documented status and message (see tests/c/misuse.c).
#[test]
fn cpp_api_checks_on_the_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("api");
    compile("c++", "c++17", &["tests/cpp/api.cpp"], &exe);
    let out = run(&exe, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "api: ok\n");
}

#[test]
fn c_misuse_returns_documented_statuses() {
    let case = pipeline_case();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("misuse");
    compile("cc", "c99", &["tests/c/misuse.c"], &exe);
    let mut args: Vec<String> = [
        "dit",
        "vae",
        "t5",
        "tokenizer",
        "dit_config",
        "vae_config",
        "t5_config",
    ]
    .iter()
    .map(|k| path_arg(&case, k))
    .collect();
    args.push(dir.path().display().to_string());
    let lora = fixtures_root().join("models/tiny-lora/lora_comfy.safetensors");
    args.push(lora.display().to_string());
    let valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    let out = if valgrind {
        let mut full = vec![
            "--error-exitcode=1".to_string(),
            "--leak-check=full".into(),
            "--errors-for-leak-kinds=definite".into(),
            "--quiet".into(),
            exe.display().to_string(),
        ];
        full.extend(args);
        run(Path::new("valgrind"), &full)
    } else {
        println!("valgrind is not installed: running the misuse checks without it");
        run(&exe, &args)
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("misuse: all checks passed"), "{stdout}");
}

/// `cargo cinstall --release --prefix <tmp>` installs a header, the shared and static libraries
/// and a `wanrt.pc` with which a C program compiles, links and runs. Ignored by default (a
/// release build of a few minutes, and it needs cargo-c: `cargo install cargo-c`); run it with
/// `cargo test --test ffi -- --ignored cinstall`.
#[test]
#[ignore]
fn cinstall_gives_a_working_pkg_config() {
    let prefix = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["cinstall", "--release", "--prefix"])
        .arg(prefix.path())
        .current_dir(root())
        .status()
        .expect("cargo cinstall (cargo install cargo-c)");
    assert!(status.success(), "cargo cinstall failed");
    let pc = walk(prefix.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "wanrt.pc"))
        .expect("wanrt.pc installed");
    let pkg_config = |args: &[&str]| {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("wanrt")
            .env("PKG_CONFIG_PATH", pc.parent().unwrap())
            .output()
            .expect("pkg-config");
        assert!(out.status.success(), "pkg-config {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let flags = pkg_config(&["--cflags", "--libs"]);
    let libdir = pkg_config(&["--variable=libdir"]);
    let libdir = libdir.trim();
    for name in ["libwanrt.so", "libwanrt.a"] {
        assert!(Path::new(libdir).join(name).exists(), "{name} in {libdir}");
    }
    let exe = prefix.path().join("pkg_config_test");
    let status = Command::new("cc")
        .arg(root().join("tests/c/pkg_config.c"))
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{libdir}"))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cc with `pkg-config --cflags --libs wanrt`: {flags}"
    );
    let out = Command::new(&exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

static LOGGED: std::sync::Mutex<Vec<(i32, String)>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn collect_log(user_data: *mut c_void, level: i32, message: *const c_char) {
    assert_eq!(user_data as usize, 42);
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    LOGGED.lock().unwrap().push((level, text));
}

/// Formatting it panics, as a buggy `Display` in a log message would.
struct PanicsWhenFormatted;

impl std::fmt::Display for PanicsWhenFormatted {
    fn fmt(&self, _: &mut std::fmt::Formatter) -> std::fmt::Result {
        panic!("formatting failed")
    }
}

/// `wanrt_set_log_callback`: every level reaches the callback with its user data, from any
/// thread, a NUL inside a message is escaped, a panic while formatting drops the message
/// without unwinding into the caller, and NULL silences the library again.
#[test]
fn log_callback_receives_records_until_it_is_unset() {
    use wanrt::ffi::{wanrt_set_log_callback, wanrt_status};
    log::info!("before any callback");
    let status = wanrt_set_log_callback(Some(collect_log), 42 as *mut c_void);
    assert_eq!(status, wanrt_status::Ok);
    log::error!("error");
    log::warn!("warn");
    log::info!("info");
    log::debug!("debug\0nul");
    log::warn!("{}", PanicsWhenFormatted);
    std::thread::spawn(|| log::info!("from another thread"))
        .join()
        .unwrap();
    let expected = [
        (1, "error"),
        (2, "warn"),
        (3, "info"),
        (4, "debug\\0nul"),
        (3, "from another thread"),
    ]
    .map(|(level, text)| (level, text.to_string()));
    assert_eq!(*LOGGED.lock().unwrap(), expected);
    assert_eq!(
        wanrt_set_log_callback(None, std::ptr::null_mut()),
        wanrt_status::Ok
    );
    log::warn!("after");
    assert_eq!(
        LOGGED.lock().unwrap().len(),
        expected.len(),
        "silent after NULL"
    );
}

/// Training through the C ABI (tests/c/train.c): a trainer from a `wanrt train` argument
/// list, cancelled from its progress callback after step 2, leaves a LoRA of those 2 steps that
/// loads; the trainer's misuse returns the documented statuses.
#[test]
fn c_training_cancelled_from_the_callback_leaves_a_valid_lora() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("train");
    compile("cc", "c99", &["tests/c/train.c"], &exe);
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    common::train_caches::write_caches(&cache);
    let out = dir.path().join("out");
    let mut args = Vec::new();
    for (flag, value) in [
        ("--dit", common::model("tiny-dit/dit_bf16.safetensors")),
        ("--dit-config", common::model("tiny-dit/config.json")),
        ("--cache_directory", cache),
        ("--output_dir", out.clone()),
    ] {
        args.extend([flag.to_string(), value.display().to_string()]);
    }
    for a in [
        "--output_name",
        "mine",
        "--network_dim",
        "2",
        "--max_train_steps",
        "5",
        "--learning_rate",
        "1e-3",
    ] {
        args.push(a.to_string());
    }
    let output = run(&exe, &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("step 2/5") && !stdout.contains("step 3/5"),
        "{stdout}"
    );
    let lora = wanrt::lora::Lora::open(out.join("mine.safetensors")).unwrap();
    assert_eq!(lora.metadata["ss_steps"], "2");
    assert_eq!(lora.modules.len(), 20);
}
