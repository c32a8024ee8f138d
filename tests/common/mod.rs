//! Helpers shared by the integration tests: finding the reference fixtures, reading a case's
//! `case.json` and tensor files, the relative L2 error the fixtures' tolerances are stated in, and
//! reading MP4s back with other decoders (`readback`).
// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

#[cfg(feature = "openh264-source")]
pub mod readback;
pub mod train_caches;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use wanrt::Tensor;

/// The folder holding the reference fixtures: `$WANRT_FIXTURES`, or `../shared/fixtures` next
/// to the crate.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("WANRT_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

/// `rel` under the fixture models (`fixtures_root()/models`); panics with a hint when the
/// fixtures are not there.
pub fn model(rel: &str) -> PathBuf {
    let models = fixtures_root().join("models");
    assert!(
        models.is_dir(),
        "fixtures not found at {} (set WANRT_FIXTURES)",
        models.display()
    );
    models.join(rel)
}

/// The fixtures' tiny models as explicit files: the bf16 DiT, the f32 VAE and UMT5 encoder.
pub fn tiny_files_bf16() -> wanrt::pipeline::ModelFiles {
    wanrt::pipeline::ModelSource {
        dit: Some(model("tiny-dit/dit_bf16.safetensors")),
        dit_config: Some(model("tiny-dit/config.json")),
        vae: Some(model("tiny-vae/vae_f32.safetensors")),
        vae_config: Some(model("tiny-vae/config.json")),
        t5: Some(model("tiny-umt5/umt5_enc_f32.safetensors")),
        t5_config: Some(model("tiny-umt5/config.json")),
        tokenizer: Some(model("tiny-umt5/tokenizer.json")),
        ..wanrt::pipeline::ModelSource::default()
    }
    .resolve()
    .unwrap()
}

/// Every folder under `root` that holds a `case.json` (not descending into cases), sorted.
pub fn find_cases(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if dir.join("case.json").is_file() {
            out.push(dir.to_path_buf());
            return Ok(());
        }
        if depth == 0 {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, depth - 1, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, 4, &mut out)?;
    out.sort();
    Ok(out)
}

/// Named tensors of one file.
pub type Tensors = BTreeMap<String, Tensor>;

/// One fixture case: its folder and its parsed `case.json`.
#[derive(Debug, Clone)]
pub struct Case {
    /// The folder name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// The `kind` field.
    pub kind: String,
    /// The whole `case.json`.
    pub json: Value,
}

impl Case {
    /// Reads `dir/case.json`.
    pub fn load(dir: &Path) -> Result<Case, String> {
        let path = dir.join("case.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let kind = json
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{}: no string field `kind`", path.display()))?
            .to_string();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Case {
            name,
            dir: dir.to_path_buf(),
            kind,
            json,
        })
    }

    /// A field, if present and not null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    /// A required string field.
    pub fn str(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// An optional number field.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.missing(key, "a number")))
            .transpose()
    }

    /// A required number field.
    pub fn f64(&self, key: &str) -> Result<f64, String> {
        self.opt_f64(key)?
            .ok_or_else(|| self.missing(key, "a number"))
    }

    /// An optional list of numbers.
    pub fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>, String> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.missing(key, "a list of numbers"))?;
        list.iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| self.missing(key, "a list of numbers"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A path field, resolved against the case folder.
    pub fn path(&self, key: &str) -> Result<PathBuf, String> {
        Ok(self.dir.join(self.str(key)?))
    }

    /// The tensors of the file named by field `key` (`"inputs"`, `"expected"`).
    pub fn tensors(&self, key: &str) -> Result<Tensors, String> {
        let path = self.path(key)?;
        let ckpt = wanrt::io::open(&path).map_err(|e| e.to_string())?;
        Ok(ckpt.tensors)
    }

    /// The relative-L2 tolerance for a backend computing in f32: `tolerance.rel_l2`, else
    /// `tolerance.rel_l2_f32_compute`, never below [`F32_STORAGE_FLOOR`]; a case without either
    /// gets the floor.
    pub fn rel_l2_tolerance(&self) -> Result<f64, String> {
        let Some(tol) = self.get("tolerance") else {
            return Ok(F32_STORAGE_FLOOR);
        };
        for key in ["rel_l2", "rel_l2_f32_compute"] {
            if let Some(v) = tol.get(key) {
                let v = v
                    .as_f64()
                    .ok_or_else(|| self.missing(&format!("tolerance.{key}"), "a number"))?;
                return Ok(v.max(F32_STORAGE_FLOOR));
            }
        }
        Ok(F32_STORAGE_FLOOR)
    }

    /// The relative-L2 tolerance for a backend computing in bf16 (the CUDA path, or the CPU under
    /// `WANRT_COMPUTE=bf16`): `tolerance.rel_l2_bf16_compute`, `None` when the case has none.
    pub fn bf16_compute_tolerance(&self) -> Result<Option<f64>, String> {
        const KEY: &str = "rel_l2_bf16_compute";
        match self.get("tolerance").and_then(|t| t.get(KEY)) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.missing(&format!("tolerance.{KEY}"), "a number")),
        }
    }

    fn missing(&self, key: &str, what: &str) -> String {
        format!("case.json field `{key}` must be {what}")
    }
}

/// The smallest relative-L2 difference a fixture can resolve. Inputs and expected values are
/// stored as float32 although the references were computed in float64, so an exact
/// implementation still differs from the stored values by the rounding of its inputs and of the
/// expected values, each up to 2^-24 relative per element: about two float32 roundings. A stated
/// tolerance below 2^-22 (~2.4e-7) cannot be met by any implementation and is raised to it; the
/// harness prints the tolerance it applied.
pub const F32_STORAGE_FLOOR: f64 = 1.0 / (1u64 << 22) as f64;

/// A tensor's elements widened to f64.
pub fn f64_data(t: &Tensor) -> Result<Vec<f64>, String> {
    Ok(t.to_f32_vec()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// A named tensor of `tensors`, or an error naming it.
pub fn tensor<'a>(tensors: &'a Tensors, name: &str) -> Result<&'a Tensor, String> {
    tensors
        .get(name)
        .ok_or_else(|| format!("no tensor `{name}`"))
}

/// `‖out − expected‖₂ / ‖expected‖₂` in f64 over the whole tensor (the denominator floored at
/// 1e-30, as the oracle does). NaN when the lengths differ or `out` holds a NaN.
pub fn rel_l2(out: &[f64], expected: &[f64]) -> f64 {
    if out.len() != expected.len() {
        return f64::NAN;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (o, e) in out.iter().zip(expected) {
        diff += (o - e) * (o - e);
        norm += e * e;
    }
    diff.sqrt() / norm.sqrt().max(1e-30)
}

/// [`rel_l2`] of f32 values (accumulated in f64); the lengths must agree.
pub fn rel_l2_f32(out: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(out.len(), expected.len(), "rel_l2 of different lengths");
    let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    rel_l2(&widen(out), &widen(expected))
}

/// [`rel_l2`] of two tensors of the same shape.
pub fn rel_l2_tensors(out: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(out.dims(), expected.dims());
    rel_l2_f32(&out.to_f32_vec().unwrap(), &expected.to_f32_vec().unwrap())
}

/// The first CUDA device for a GPU test, or `None` after printing why `test` skips (a build
/// without the `cuda` feature, no driver, no device).
pub fn cuda_device(test: &str) -> Option<wanrt::backend::Device> {
    match wanrt::backend::cuda::list_devices() {
        Ok(d) if !d.is_empty() => Some(wanrt::backend::Device::Cuda(d[0].ordinal)),
        Ok(_) => {
            println!("{test}: SKIP: the CUDA driver reports no device");
            None
        }
        Err(e) => {
            assert!(
                matches!(e, wanrt::Error::CudaNotCompiled | wanrt::Error::Device(_)),
                "{e}"
            );
            println!("{test}: SKIP: no CUDA device: {e}");
            None
        }
    }
}
