//! Finding the model files: given one by one, or in a model folder of either layout users
//! download.
//!
//! - The official Wan-AI folder (`Wan-AI/Wan2.1-T2V-1.3B`, `-14B`): the DiT as
//!   `diffusion_pytorch_model.safetensors` or shards with their `.index.json`, its
//!   `config.json`, `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth` and
//!   `google/umt5-xxl/tokenizer.json`.
//! - ComfyUI's `models/` tree (or the ComfyUI folder above it): `diffusion_models/` (`unet/`
//!   in older installs), `vae/`, `text_encoders/` (`clip/`). Files are recognised by their
//!   tensors, not their names, since users rename them; a folder with several candidates needs
//!   the one meant named explicitly. ComfyUI ships no tokenizer file (its UMT5 tokenizer lives
//!   in its code), so `tokenizer.json` is looked for next to the text encoder.
//!
//! A file given explicitly always wins over the folder's.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::config::ModelType;
use crate::io::layout::{self, Component};

/// Where the model files came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModelLayout {
    /// Every file was given explicitly.
    #[default]
    Files,
    /// The official Wan-AI folder.
    WanAi,
    /// ComfyUI's `models/` tree.
    ComfyUi,
}

impl std::fmt::Display for ModelLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelLayout::Files => "explicit files",
            ModelLayout::WanAi => "official Wan-AI folder",
            ModelLayout::ComfyUi => "ComfyUI models folder",
        })
    }
}

/// The files a [`super::Pipeline`] loads, all known to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// Where they came from.
    pub layout: ModelLayout,
    /// The DiT: a file or a sharded safetensors folder.
    pub dit: PathBuf,
    /// The VAE.
    pub vae: PathBuf,
    /// The UMT5 text encoder.
    pub t5: PathBuf,
    /// The UMT5 `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// A DiT `config.json` overriding the inferred config.
    pub dit_config: Option<PathBuf>,
    /// A VAE `config.json`.
    pub vae_config: Option<PathBuf>,
    /// A UMT5 `config.json`.
    pub t5_config: Option<PathBuf>,
}

/// What the caller gave: a model folder, explicit files, or both (explicit files win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSource {
    /// A model folder in either layout.
    pub models_dir: Option<PathBuf>,
    /// The DiT file (or sharded folder).
    pub dit: Option<PathBuf>,
    /// The VAE file.
    pub vae: Option<PathBuf>,
    /// The UMT5 encoder file.
    pub t5: Option<PathBuf>,
    /// The UMT5 `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// A DiT `config.json`.
    pub dit_config: Option<PathBuf>,
    /// A VAE `config.json`.
    pub vae_config: Option<PathBuf>,
    /// A UMT5 `config.json`.
    pub t5_config: Option<PathBuf>,
}

/// Wan-AI's file names.
const WAN_VAE: &str = "Wan2.1_VAE.pth";
const WAN_T5: &str = "models_t5_umt5-xxl-enc-bf16.pth";
const WAN_TOKENIZER: &str = "google/umt5-xxl/tokenizer.json";
const WAN_DIT_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
const WAN_DIT: &str = "diffusion_pytorch_model.safetensors";

impl ModelSource {
    /// Resolves every file: the explicit ones, the rest from the model folder. Fails, naming
    /// the file and the layout looked in, when one is missing.
    pub fn resolve(&self) -> Result<ModelFiles> {
        for (what, p) in [
            ("DiT", &self.dit),
            ("VAE", &self.vae),
            ("text encoder", &self.t5),
            ("tokenizer", &self.tokenizer),
            ("DiT config", &self.dit_config),
            ("VAE config", &self.vae_config),
            ("text encoder config", &self.t5_config),
        ] {
            if let Some(p) = p {
                exists(p, what)?;
            }
        }
        let all_given = self.dit.is_some()
            && self.vae.is_some()
            && self.t5.is_some()
            && self.tokenizer.is_some();
        let found = match &self.models_dir {
            Some(dir) if !all_given => Some(scan_folder(dir, self)?),
            Some(dir) => {
                exists(dir, "model folder")?;
                None
            }
            None => None,
        };
        let layout = found.as_ref().map_or(ModelLayout::Files, |f| f.layout);
        let f = found.unwrap_or_default();
        let pick = |given: &Option<PathBuf>, from: Option<PathBuf>, what: &str, flag: &str| {
            given.clone().or(from).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no {what} given: pass {flag} FILE, or a model folder (--models DIR)"
                ))
            })
        };
        Ok(ModelFiles {
            layout,
            dit: pick(&self.dit, f.dit, "DiT", "--dit")?,
            vae: pick(&self.vae, f.vae, "VAE", "--vae")?,
            t5: pick(&self.t5, f.t5, "text encoder", "--t5")?,
            tokenizer: pick(&self.tokenizer, f.tokenizer, "tokenizer", "--tokenizer")?,
            dit_config: self.dit_config.clone().or(f.dit_config),
            vae_config: self.vae_config.clone(),
            t5_config: self.t5_config.clone(),
        })
    }
}

/// What a model folder provides for the files not given explicitly.
#[derive(Debug, Default)]
struct Found {
    layout: ModelLayout,
    dit: Option<PathBuf>,
    vae: Option<PathBuf>,
    t5: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    dit_config: Option<PathBuf>,
}

/// An error for a file a path names that is not there.
fn exists(p: &Path, what: &str) -> Result<()> {
    std::fs::metadata(p)
        .map(|_| ())
        .map_err(|e| Error::io(p, std::io::Error::new(e.kind(), format!("{what}: {e}"))))
}

/// Finds the files of a model folder not given explicitly in `given`.
fn scan_folder(dir: &Path, given: &ModelSource) -> Result<Found> {
    exists(dir, "model folder")?;
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder (--models takes a model folder; use --dit/--vae/--t5 for files)",
            dir.display()
        )));
    }
    let wan_ai = [WAN_VAE, WAN_T5, WAN_DIT, WAN_DIT_INDEX, "config.json"]
        .iter()
        .any(|f| dir.join(f).is_file());
    if wan_ai {
        return wan_ai_folder(dir, given);
    }
    for root in [dir.to_path_buf(), dir.join("models")] {
        let subdirs = ["diffusion_models", "unet", "vae", "text_encoders", "clip"];
        if subdirs.iter().any(|s| root.join(s).is_dir()) {
            return comfy_folder(&root, given);
        }
    }
    Err(Error::InvalidArgument(format!(
        "{} is neither an official Wan-AI model folder ({WAN_DIT} or its shards, config.json, \
         {WAN_VAE}, {WAN_T5}, {WAN_TOKENIZER}) nor a ComfyUI models folder (diffusion_models/, \
         vae/, text_encoders/)",
        dir.display()
    )))
}

/// A file the layout names, or an error naming it and the layout.
fn expect(dir: &Path, name: &str, what: &str, layout: ModelLayout) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.exists() {
        return Ok(p);
    }
    Err(Error::bad_file(
        dir,
        format!(
            "{layout}: {what} `{name}` is missing (expected at {})",
            p.display()
        ),
    ))
}

fn wan_ai_folder(dir: &Path, given: &ModelSource) -> Result<Found> {
    let layout = ModelLayout::WanAi;
    let dit = if given.dit.is_some() {
        None
    } else if dir.join(WAN_DIT_INDEX).is_file() {
        // The folder is the sharded checkpoint; io::open reads the shards its index names.
        Some(dir.to_path_buf())
    } else if dir.join(WAN_DIT).is_file() {
        Some(dir.join(WAN_DIT))
    } else {
        return Err(Error::bad_file(
            dir,
            format!(
                "{layout}: the DiT is missing: neither `{WAN_DIT}` nor `{WAN_DIT_INDEX}` with \
                 its shards"
            ),
        ));
    };
    let file = |given: &Option<PathBuf>, name: &str, what: &str| match given {
        Some(_) => Ok(None),
        None => expect(dir, name, what, layout).map(Some),
    };
    let config = dir.join("config.json");
    Ok(Found {
        layout,
        dit,
        vae: file(&given.vae, WAN_VAE, "VAE")?,
        t5: file(&given.t5, WAN_T5, "text encoder")?,
        tokenizer: file(&given.tokenizer, WAN_TOKENIZER, "tokenizer")?,
        dit_config: config.is_file().then_some(config),
    })
}

fn comfy_folder(root: &Path, given: &ModelSource) -> Result<Found> {
    let find =
        |given: &Option<PathBuf>, dirs: [&str; 2], want: &dyn Fn(Component) -> bool| match given {
            Some(_) => Ok(None),
            None => pick_component(root, dirs, want).map(Some),
        };
    let dit = find(&given.dit, ["diffusion_models", "unet"], &|c| {
        c == Component::Dit(ModelType::T2v)
    })?;
    let vae = find(&given.vae, ["vae", "vae"], &|c| c == Component::Vae)?;
    let t5 = find(&given.t5, ["text_encoders", "clip"], &|c| {
        c == Component::Umt5Encoder
    })?;
    let tokenizer = match &given.tokenizer {
        Some(_) => None,
        None => Some(comfy_tokenizer(
            root,
            given.t5.as_deref().or(t5.as_deref()),
        )?),
    };
    Ok(Found {
        layout: ModelLayout::ComfyUi,
        dit,
        vae,
        t5,
        tokenizer,
        dit_config: None,
    })
}

/// The one file in `root/dirs[..]` whose tensors make it the wanted component.
fn pick_component(
    root: &Path,
    dirs: [&str; 2],
    want: &dyn Fn(Component) -> bool,
) -> Result<PathBuf> {
    let what = match dirs[0] {
        "diffusion_models" => "Wan2.1 text-to-video DiT",
        "vae" => "Wan2.1 VAE",
        _ => "UMT5-XXL text encoder",
    };
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for d in dirs.iter().map(|d| root.join(d)) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().is_some_and(|e| {
                        e.eq_ignore_ascii_case("safetensors") || e.eq_ignore_ascii_case("pth")
                    })
            })
            .collect();
        files.sort();
        for p in files {
            // Unreadable or foreign files are not candidates; they are listed if nothing fits.
            let c = crate::io::open(&p).and_then(|c| layout::detect(&c));
            match c {
                Ok(det) if want(det.component) => found.push(p),
                _ => seen.push(p),
            }
        }
        if dirs[0] == dirs[1] {
            break;
        }
    }
    found.dedup();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::bad_file(
            root,
            format!(
                "{}: no {what} in {}/ {}",
                ModelLayout::ComfyUi,
                dirs[0],
                if seen.is_empty() {
                    "(no .safetensors or .pth file there)".to_string()
                } else {
                    format!(
                        "(looked at: {})",
                        seen.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        )),
        _ => Err(Error::InvalidArgument(format!(
            "{}: several {what}s in {}: {}; choose one with {}",
            ModelLayout::ComfyUi,
            root.join(dirs[0]).display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            match dirs[0] {
                "diffusion_models" => "--dit",
                "vae" => "--vae",
                _ => "--t5",
            }
        ))),
    }
}

/// ComfyUI has no tokenizer file: look next to the text encoder and in the usual places.
fn comfy_tokenizer(root: &Path, t5: Option<&Path>) -> Result<PathBuf> {
    let near = t5.and_then(Path::parent).unwrap_or(root);
    let candidates = [
        near.join("tokenizer.json"),
        near.join("umt5-xxl/tokenizer.json"),
        near.join("google/umt5-xxl/tokenizer.json"),
        root.join("text_encoders/tokenizer.json"),
        root.join("text_encoders/umt5-xxl/tokenizer.json"),
    ];
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(Error::bad_file(
        root,
        format!(
            "{}: no UMT5 tokenizer.json (ComfyUI keeps its tokenizer inside its code, not in \
             models/): download google/umt5-xxl's tokenizer.json and pass --tokenizer FILE, or \
             put it at {}",
            ModelLayout::ComfyUi,
            candidates[0].display()
        ),
    ))
}
