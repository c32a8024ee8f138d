//! What one generation asks for ([`GenerateRequest`]), its defaults and presets, and the checks
//! that need no model.

use serde_json::{json, Value};

use super::VaeTiling;
use crate::error::{Error, Result};
use crate::model::dit::AttentionChoice;
use crate::sampler::{Slg, SolverKind};
use crate::tensor::Tensor;

/// Wan's default negative prompt (`wan/configs/shared_config.py`, wan-architecture.md §4.2),
/// used when a request gives none. Upstream uses the Chinese text, so it is kept as is.
pub const DEFAULT_NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

/// The largest seed: seeds are `0..=2^63 − 1`, so that every seed is also a non-negative
/// signed 64-bit integer (C's `int64_t`, JSON readers that parse into signed integers, most
/// databases) and survives a round trip through them.
pub const MAX_SEED: u64 = i64::MAX as u64;

/// Wan2.1's frame rate: every video is made for 16 fps.
pub const FPS: f64 = 16.0;

/// The longest prompt accepted before tokenizing, in bytes. The encoder reads at most
/// `text_len` (512) tokens, a few kilobytes of text; anything far longer is a mistake.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// The RoPE position limit of the DiT per axis (wan-architecture.md §5): latent frames and
/// token rows/columns (`H/16`, `W/16`) must stay below it.
const ROPE_POSITIONS: usize = 1024;

/// The most frames a request may ask for: the DiT's RoPE positions allow `ROPE_POSITIONS - 1`
/// latent frames after the first, four video frames each.
pub const MAX_FRAMES: usize = 4 * (ROPE_POSITIONS - 1) + 1;

/// Normalized Attention Guidance settings (lora-guidance-training.md §3.4).
#[derive(Debug, Clone, PartialEq)]
pub struct NagSettings {
    /// Guidance scale `s` (11 in Kijai's node; 1 disables the guidance).
    pub scale: f32,
    /// Norm-ratio threshold `τ` (2.5).
    pub tau: f32,
    /// Blend `α` between the guided and the positive attention output (0.25).
    pub alpha: f32,
    /// NAG's own negative prompt; `None`: Wan's default negative prompt.
    pub negative_prompt: Option<String>,
}

impl Default for NagSettings {
    /// Kijai's `WanVideoApplyNAG` defaults with Wan's default negative prompt.
    fn default() -> NagSettings {
        NagSettings {
            scale: 11.0,
            tau: 2.5,
            alpha: 0.25,
            negative_prompt: None,
        }
    }
}

/// A named set of sampling settings (the project's presets, issue 7 item 2). Explicit settings
/// override a preset: apply the preset first, then change fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// For a step-distilled model or a step-distill LoRA (lightx2v's, merged at strength 1):
    /// UniPC, 8 steps, shift 5, CFG 1 (the distillation baked guidance in), NAG on with Wan's
    /// default negative prompt to bring negative prompting back at no CFG cost.
    Distill,
    /// The base model as upstream samples it: UniPC, 30 steps, shift 5, CFG 5 (Wan's own
    /// default is 50 steps; 30 is within the 20-50 range that works and 40 % cheaper).
    Quality,
}

impl Preset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: [Preset; 2] = [Preset::Distill, Preset::Quality];

    /// The preset's name as users type it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Distill => "distill",
            Preset::Quality => "quality",
        }
    }

    /// Sets the sampling fields of `req` (solver, steps, shift, guidance, NAG) to the preset's
    /// values; the prompt, size, frames and seed are left alone.
    pub fn apply(self, req: &mut GenerateRequest) {
        req.solver = SolverKind::UniPc;
        req.shift = 5.0;
        req.cfg_zero_star = false;
        match self {
            Preset::Distill => {
                req.steps = 8;
                req.guidance_scale = 1.0;
                req.nag = Some(NagSettings::default());
            }
            Preset::Quality => {
                req.steps = 30;
                req.guidance_scale = 5.0;
                req.nag = None;
            }
        }
    }

    /// One line describing the preset's values (what `--help` prints).
    pub fn describe(self) -> String {
        let mut r = GenerateRequest::default();
        self.apply(&mut r);
        let nag = match &r.nag {
            Some(n) => format!(
                ", NAG scale {} tau {} alpha {} (Wan's default negative prompt)",
                n.scale, n.tau, n.alpha
            ),
            None => String::new(),
        };
        let extra = match self {
            Preset::Distill => "; use it with a step-distill LoRA at strength 0.9-1 (--lora FILE:1) or a distilled model",
            Preset::Quality => "",
        };
        format!(
            "{}: {} {} steps, shift {}, cfg {}{nag}{extra}",
            self.name(),
            solver_name(r.solver),
            r.steps,
            r.shift,
            r.guidance_scale
        )
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown preset `{s}` (expected distill or quality)"
                ))
            })
    }
}

/// The name users pass for a solver.
pub fn solver_name(s: SolverKind) -> &'static str {
    match s {
        SolverKind::UniPc => "unipc",
        SolverKind::DpmPp => "dpm++",
        SolverKind::Euler => "euler",
        SolverKind::Lcm => "lcm",
    }
}

/// One text-to-video generation: the prompt, the video's size, the sampling and guidance
/// settings and the initial noise. [`Default`] is the `quality` preset at 832×480, 81 frames
/// (5 s at 16 fps), the 1.3B model's size.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// What the video shows.
    pub prompt: String,
    /// What to steer away from with CFG; `None`: [`DEFAULT_NEGATIVE_PROMPT`].
    pub negative_prompt: Option<String>,
    /// Frame width in pixels, a multiple of 16.
    pub width: usize,
    /// Frame height in pixels, a multiple of 16.
    pub height: usize,
    /// Frame count `1 + 4k` (81: 5 s at 16 fps; 1: an image).
    pub frames: usize,
    /// Denoising steps.
    pub steps: usize,
    /// The solver and its schedule ([`SolverKind::schedule`]).
    pub solver: SolverKind,
    /// The flow shift of the schedule (wan-architecture.md §4.3).
    pub shift: f64,
    /// Classifier-free guidance scale (1: no guidance, the negative prompt is not used).
    pub guidance_scale: f64,
    /// CFG-Zero*: the optimised scale `s*` and zero-init (lora-guidance-training.md §3.2).
    pub cfg_zero_star: bool,
    /// How many first steps CFG-Zero* zeroes; `None`: 4 % of the steps, rounded (Wan T2V's 2 of
    /// 50; none under 13 steps).
    pub zero_init_steps: Option<usize>,
    /// Normalized Attention Guidance in the conditional pass.
    pub nag: Option<NagSettings>,
    /// Skip Layer Guidance in the unconditional pass.
    pub slg: Option<Slg>,
    /// TeaCache threshold (the rescaled relative-L1 budget; 0.05-0.08 for 1.3B, 0.14-0.2 for
    /// 14B); `None`: off.
    pub teacache: Option<f64>,
    /// The noise seed, `0..=`[`MAX_SEED`]; `None`: a random one (recorded in the result).
    pub seed: Option<u64>,
    /// An explicit initial latent `x_T` `[1, 16, T, H/8, W/8]` instead of the seed's noise
    /// (the seed still drives LCM's re-noising).
    pub latent_init: Option<Tensor>,
    /// Prepend the trigger phrases of the loaded LoRAs to the prompt.
    pub lora_trigger: bool,
    /// Run the conditional and unconditional passes as one batch of 2 (faster, twice the
    /// activation memory).
    pub batch_cfg: bool,
    /// Also return the decoded video as f32 ([`super::Generation::video`]).
    pub keep_video: bool,
    /// The DiT's self-attention: `auto` (the 8-bit kernel where the device has one), `q8` or
    /// `bf16` (on the CPU, `q8` is the 8-bit scheme's slow emulation, the others exact f32).
    pub attention: AttentionChoice,
    /// How the VAE decodes (default [`VaeTiling::Auto`]: whole frames unless only tiles fit
    /// in memory); a generation's parameters hold the choice made.
    pub vae_tiling: VaeTiling,
}

impl Default for GenerateRequest {
    fn default() -> GenerateRequest {
        let mut r = GenerateRequest {
            prompt: String::new(),
            negative_prompt: None,
            width: 832,
            height: 480,
            frames: 81,
            steps: 0,
            solver: SolverKind::UniPc,
            shift: 0.0,
            guidance_scale: 0.0,
            cfg_zero_star: false,
            zero_init_steps: None,
            nag: None,
            slg: None,
            teacache: None,
            seed: None,
            latent_init: None,
            lora_trigger: false,
            batch_cfg: true,
            keep_video: false,
            attention: AttentionChoice::Auto,
            vae_tiling: VaeTiling::Auto,
        };
        Preset::Quality.apply(&mut r);
        r
    }
}

impl GenerateRequest {
    /// A request with the default settings ([`Default`]) for `prompt`.
    pub fn new(prompt: impl Into<String>) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            ..GenerateRequest::default()
        }
    }

    /// The latent frame count `T = (frames − 1)/4 + 1`.
    pub fn latent_frames(&self) -> usize {
        (self.frames.saturating_sub(1)) / 4 + 1
    }

    /// The latent dims `[1, 16, T, H/8, W/8]` for a VAE with `z_dim` channels.
    pub fn latent_dims(&self, z_dim: usize) -> [usize; 5] {
        [
            1,
            z_dim,
            self.latent_frames(),
            self.height / 8,
            self.width / 8,
        ]
    }

    /// Whether the unconditional (negative prompt) pass runs at some step.
    pub fn uses_negative_prompt(&self) -> bool {
        self.cfg_zero_star || self.guidance_scale != 1.0
    }

    /// The negative prompt in effect.
    pub fn negative_prompt(&self) -> &str {
        self.negative_prompt
            .as_deref()
            .unwrap_or(DEFAULT_NEGATIVE_PROMPT)
    }

    /// The last step CFG-Zero* zeroes (the driver's `zero_steps`), if any.
    pub fn zero_steps(&self) -> Option<usize> {
        let n = self
            .zero_init_steps
            .unwrap_or_else(|| (0.04 * self.steps as f64).round() as usize);
        n.checked_sub(1)
    }

    /// Checks everything that needs no model: sizes (multiples of 16, within the DiT's RoPE
    /// range), the frame count (`1 + 4k`), steps, shift, guidance, NAG, SLG and TeaCache
    /// values, the seed range and the prompt lengths in bytes. The pipeline also checks what
    /// depends on the model ([`super::Pipeline::check`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let max_side = 16 * ROPE_POSITIONS;
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 {
                return bad(format!(
                    "{name} 0: the {name} must be a multiple of 16 from 16 to {max_side}"
                ));
            }
            if v > max_side {
                return bad(format!(
                    "{name} {v} is too large: the DiT has positions for at most {max_side} pixels"
                ));
            }
            if !v.is_multiple_of(16) {
                let lo = v / 16 * 16;
                return bad(format!(
                    "{name} {v} is not a multiple of 16 (the VAE scales by 8, then the DiT \
                     patches 2x2): use {}",
                    suggestions(&[lo, lo + 16], 16, max_side)
                ));
            }
        }
        let max_frames = MAX_FRAMES;
        if self.frames > max_frames {
            return bad(format!(
                "{} frames is too many: the DiT has positions for at most {max_frames} frames",
                self.frames
            ));
        }
        if self.frames == 0 || !(self.frames - 1).is_multiple_of(4) {
            let lo = (self.frames.max(1) - 1) / 4 * 4 + 1;
            return bad(format!(
                "{} frames: the frame count must be 1 + 4k (the VAE turns 4 frames into one \
                 latent frame after the first): use {}",
                self.frames,
                suggestions(&[lo, lo + 4], 1, max_frames)
            ));
        }
        if self.steps == 0 || self.steps > 1000 {
            return bad(format!("{} steps (1 to 1000 allowed)", self.steps));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return bad(format!("shift {} must be a positive number", self.shift));
        }
        if !self.guidance_scale.is_finite() {
            return bad(format!(
                "guidance scale {} must be a finite number",
                self.guidance_scale
            ));
        }
        if let Some(n) = &self.nag {
            if !(n.scale.is_finite() && n.scale >= 1.0) {
                return bad(format!("NAG scale {} must be at least 1", n.scale));
            }
            if !(n.tau.is_finite() && n.tau > 0.0) {
                return bad(format!("NAG tau {} must be positive", n.tau));
            }
            if !(0.0..=1.0).contains(&n.alpha) {
                return bad(format!("NAG alpha {} must be within [0, 1]", n.alpha));
            }
        }
        if let Some(s) = &self.slg {
            s.validate()?;
        }
        if let Some(t) = self.teacache {
            if !(t.is_finite() && t >= 0.0) {
                return bad(format!("TeaCache threshold {t} must be a number >= 0"));
            }
        }
        if let Some(seed) = self.seed {
            if seed > MAX_SEED {
                return bad(format!("seed {seed} is out of range (0 to {MAX_SEED})"));
            }
        }
        let texts = [
            ("prompt", Some(self.prompt.as_str())),
            ("negative prompt", self.negative_prompt.as_deref()),
            (
                "NAG negative prompt",
                self.nag.as_ref().and_then(|n| n.negative_prompt.as_deref()),
            ),
        ];
        for (name, text) in texts {
            if let Some(t) = text.filter(|t| t.len() > MAX_PROMPT_BYTES) {
                return bad(format!(
                    "the {name} is {} bytes long; at most {MAX_PROMPT_BYTES} are accepted \
                     (the text encoder reads only its first 512 tokens)",
                    t.len()
                ));
            }
        }
        Ok(())
    }

    /// The settings as JSON (the prompt as given; the caller adds what was resolved).
    pub fn to_json(&self) -> Value {
        json!({
            "prompt": self.prompt,
            "negative_prompt": self.uses_negative_prompt().then(|| self.negative_prompt()),
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "fps": FPS,
            "steps": self.steps,
            "sampler": solver_name(self.solver),
            "shift": self.shift,
            "cfg": self.guidance_scale,
            "cfg_zero_star": self.cfg_zero_star.then(|| json!({
                "zero_init_steps": self.zero_steps().map_or(0, |z| z + 1),
            })),
            "nag": self.nag.as_ref().map(|n| json!({
                "scale": n.scale,
                "tau": n.tau,
                "alpha": n.alpha,
                "negative_prompt": n.negative_prompt.as_deref().unwrap_or(DEFAULT_NEGATIVE_PROMPT),
            })),
            "slg": self.slg.as_ref().map(|s| json!({
                "blocks": s.blocks,
                "start": s.start,
                "end": s.end,
            })),
            "teacache": self.teacache,
            "seed": self.seed,
            "latent_init": self.latent_init.is_some(),
            "attention": self.attention.name(),
        })
    }
}

/// The candidates within `min..=max`, as "a or b" (every caller has at least one valid
/// candidate: the nearest valid value below or above).
fn suggestions(candidates: &[usize], min: usize, max: usize) -> String {
    let valid: Vec<String> = candidates
        .iter()
        .filter(|c| (min..=max).contains(*c))
        .map(|c| c.to_string())
        .collect();
    valid.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_presets_differ() {
        let r = GenerateRequest::new("a cat");
        r.validate().unwrap();
        assert_eq!(
            (r.steps, r.guidance_scale, r.latent_frames()),
            (30, 5.0, 21)
        );
        let mut d = r.clone();
        Preset::Distill.apply(&mut d);
        assert_eq!((d.steps, d.guidance_scale), (8, 1.0));
        assert!(d.nag.is_some() && !d.uses_negative_prompt());
        assert!(Preset::Distill.describe().contains("8 steps"));
        assert_eq!("QUALITY".parse::<Preset>().unwrap(), Preset::Quality);
        assert!("fast".parse::<Preset>().is_err());
    }

    #[test]
    fn rejects_bad_sizes_frames_and_seeds() {
        let msg = |f: &dyn Fn(&mut GenerateRequest)| {
            let mut r = GenerateRequest::new("x");
            f(&mut r);
            r.validate().unwrap_err().to_string()
        };
        assert!(msg(&|r| r.width = 840).contains("832 or 848"));
        assert!(msg(&|r| r.height = 8).contains("use 16"));
        assert!(msg(&|r| r.frames = 80).contains("77 or 81"));
        assert!(msg(&|r| r.frames = 0).contains("1 + 4k"));
        assert!(msg(&|r| r.frames = 0).contains("use 1"));
        assert!(msg(&|r| r.height = 8).ends_with("use 16"));
        assert!(msg(&|r| r.width = 16380).ends_with("use 16368 or 16384"));
        assert!(msg(&|r| r.frames = 4091).ends_with("use 4089 or 4093"));
        assert!(msg(&|r| r.frames = 4092).ends_with("use 4089 or 4093"));
        // Sides of 0 and counts far past the limits suggest no invalid value.
        for (size, side) in [
            (0, "width"),
            (0, "height"),
            (16390, "width"),
            (usize::MAX, "height"),
        ] {
            let m = msg(&|r| match side {
                "width" => r.width = size,
                _ => r.height = size,
            });
            assert!(
                m.starts_with(&format!("invalid argument: {side} {size}")),
                "{m}"
            );
            assert!(m.contains("16384") && !m.contains("use"), "{m}");
        }
        for frames in [4094, 4097, 100_000, (1 << 32) - 1, usize::MAX] {
            let m = msg(&|r| r.frames = frames);
            assert!(
                m.contains("at most 4093 frames") && !m.contains("use"),
                "{m}"
            );
        }
        assert!(msg(&|r| r.seed = Some(1 << 63)).contains("out of range"));
        assert!(msg(&|r| r.steps = 0).contains("steps"));
        assert!(msg(&|r| r.shift = f64::NAN).contains("shift"));
        assert!(msg(&|r| r.prompt = "a".repeat(MAX_PROMPT_BYTES + 1)).contains("bytes"));
        let mut ok = GenerateRequest::new("x");
        ok.seed = Some(MAX_SEED);
        ok.frames = 1;
        ok.validate().unwrap();
    }

    #[test]
    fn zero_init_follows_four_percent() {
        let mut r = GenerateRequest::new("x");
        r.steps = 50;
        assert_eq!(r.zero_steps(), Some(1));
        r.steps = 8;
        assert_eq!(r.zero_steps(), None);
        r.zero_init_steps = Some(1);
        assert_eq!(r.zero_steps(), Some(0));
    }
}
