//! Build script. The default build needs nothing but Rust; CUDA kernels are compiled at run time
//! (NVRTC) or checked by the test suite, never here.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
