//! Build script. The default build needs nothing but Rust. With the `cuda` feature it compiles
//! every `kernels/*.cu` ahead of time with nvcc into `OUT_DIR/<stem>.fatbin` (cubins for sm_80,
//! sm_86, sm_89 and sm_90a plus compute_80 PTX for newer GPUs to JIT) and writes
//! `OUT_DIR/fatbins.rs`, the table of them that `src/backend/cuda/kernels/` includes, so a new
//! `.cu` file needs no table edit; a register spill fails the build. nvcc is found through
//! `WANRT_NVCC`, `$CUDA_HOME/bin/nvcc`, `PATH`, or the toolchain `.ci/cuda-toolchain.sh` installs
//! (`$WANRT_CUDA_TOOLCHAIN` or `.cuda-toolchain/` here).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The real architectures every kernel is compiled for.
const ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90a"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
    }
}

/// Compiles each `kernels/*.cu` into one fatbin in `OUT_DIR` and writes their table.
fn compile_kernels() {
    for var in ["WANRT_NVCC", "CUDA_HOME", "WANRT_CUDA_TOOLCHAIN", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    let Some(nvcc) = find_nvcc(&manifest) else {
        fail(
            "the `cuda` feature compiles kernels/*.cu with nvcc, and none was found.\n\
             Install NVIDIA's CUDA 13 compiler from PyPI with `.ci/cuda-toolchain.sh` (it goes to \
             .cuda-toolchain/, where this build looks), or point WANRT_NVCC at an nvcc (CUDA 12.4+), \
             or set CUDA_HOME.",
        );
    };
    let kernels = manifest.join("kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .unwrap_or_else(|e| fail(&format!("reading {}: {e}", kernels.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let mut stems = Vec::new();
    for source in sources
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
    {
        let Some(stem) = source.file_stem().and_then(|s| s.to_str()) else {
            fail(&format!("{}: not a UTF-8 file name", source.display()));
        };
        let fatbin = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&nvcc);
        cmd.args(["-std=c++17", "-O3", "-fatbin"]);
        for arch in ARCHS {
            let virt = arch.replace("sm_", "compute_");
            cmd.arg(format!("-gencode=arch={virt},code={arch}"));
        }
        cmd.arg("-gencode=arch=compute_80,code=compute_80")
            .args(["-Xptxas", "--warn-on-spills,--warning-as-error"])
            .arg("-o")
            .arg(&fatbin)
            .arg(source);
        let status = cmd
            .status()
            .unwrap_or_else(|e| fail(&format!("running {}: {e}", nvcc.display())));
        if !status.success() {
            fail(&format!("nvcc failed on {} ({status})", source.display()));
        }
        stems.push(stem);
    }
    let table = out.join("fatbins.rs");
    std::fs::write(&table, fatbin_table(&stems))
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", table.display())));
}

/// The Rust source of `FATBINS`: `(stem, fatbin bytes)` for each compiled file, in the order of
/// `stems` (sorted).
fn fatbin_table(stems: &[&str]) -> String {
    let mut rows = String::new();
    for stem in stems {
        let file = format!("/{stem}.fatbin");
        rows.push_str(&format!(
            "    ({stem:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), {file:?}))),\n"
        ));
    }
    format!(
        "// Written by build.rs from kernels/*.cu.\n\
         /// The fatbin of each kernel file, by file stem, as `build.rs` left them in `OUT_DIR`.\n\
         const FATBINS: [(&str, &[u8]); {}] = [\n{rows}];\n",
        stems.len()
    )
}

/// The nvcc to use, in the order the module docs give.
fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("WANRT_NVCC") {
        return Some(PathBuf::from(p));
    }
    let toolchain = env::var_os("WANRT_CUDA_TOOLCHAIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join(".cuda-toolchain"));
    let candidates = env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .into_iter()
        .chain(env::var_os("PATH").into_iter().flat_map(|p| {
            env::split_paths(&p)
                .map(|d| d.join("nvcc"))
                .collect::<Vec<_>>()
        }))
        .chain([toolchain.join("venv/nvidia/cu13/bin/nvcc")]);
    candidates.into_iter().find(|p| p.is_file())
}

/// Stops the build with a message.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
