//! The training loop: seeded steps over cached items, AdamW, schedules, checkpoints, and a
//! saved state that resumes bit for bit on the CPU.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cache::CacheItem;
use super::network::LoraNetwork;
use super::optim::{clip_grad_norm, AdamW, AdamWParams, Moments, Scheduler};
use super::rng::TrainRng;
use super::{loss_and_grads, Timesteps};
use crate::error::{Error, Result};
use crate::io::{atomic, safetensors};
use crate::lora::Lora;
use crate::model::dit::WanDit;
use crate::sampler::noise;
use crate::tensor::Tensor;

/// The training settings (musubi's flags and defaults where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// `--network_dim` (4).
    pub network_dim: usize,
    /// `--network_alpha` (1).
    pub network_alpha: f32,
    /// `--learning_rate` (2e-6).
    pub learning_rate: f32,
    /// `--lr_scheduler` (constant).
    pub lr_scheduler: Scheduler,
    /// `--lr_warmup_steps` (0).
    pub lr_warmup_steps: usize,
    /// `--max_train_steps` (1600); `--max_train_epochs` overrides it.
    pub max_train_steps: usize,
    /// `--max_train_epochs`.
    pub max_train_epochs: Option<usize>,
    /// `--max_grad_norm` (1.0; 0 disables clipping).
    pub max_grad_norm: f64,
    /// `--seed`: the network's initialisation, the epochs' order, the noise and timesteps.
    pub seed: u64,
    /// The timestep flags.
    pub timesteps: Timesteps,
    /// AdamW's hyper-parameters.
    pub adamw: AdamWParams,
    /// More metadata for the saved LoRAs (`ss_output_name`, `modelspec.*`, the trigger
    /// phrase), written next to the `ss_*` keys the run itself fills in.
    pub metadata: BTreeMap<String, String>,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            network_dim: 4,
            network_alpha: 1.0,
            learning_rate: 2e-6,
            lr_scheduler: Scheduler::Constant,
            lr_warmup_steps: 0,
            max_train_steps: 1600,
            max_train_epochs: None,
            max_grad_norm: 1.0,
            seed: 42,
            timesteps: Timesteps::default(),
            adamw: AdamWParams::default(),
            metadata: BTreeMap::new(),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Optimizer steps taken, this one included.
    pub step: usize,
    /// The epoch of this step (from 0).
    pub epoch: usize,
    /// The flow-matching loss of the step's batch.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f32,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
}

/// The scalar part of a saved state (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Progress {
    step: usize,
    epoch: usize,
    /// Items of this epoch already used.
    position: usize,
    seed: u64,
    /// The random stream's position, as a decimal string (a u128).
    rng_position: String,
    adam_steps: u64,
}

/// A LoRA training run over cached items (batch size 1, items in a seeded order per epoch).
#[derive(Debug)]
pub struct Trainer {
    dit: WanDit,
    items: Vec<CacheItem>,
    cfg: TrainConfig,
    net: LoraNetwork,
    opt: AdamW,
    rng: TrainRng,
    step: usize,
    epoch: usize,
    position: usize,
}

/// The order of the items in `epoch`: a Fisher-Yates shuffle seeded by `seed` and the epoch.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = TrainRng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    order
}

impl Trainer {
    /// A new run of a fresh network (`network_dim`, `network_alpha`, initialised from `seed`)
    /// on `dit` over `items` (see [`super::cache::list_items`]).
    pub fn new(dit: WanDit, items: Vec<CacheItem>, cfg: TrainConfig) -> Result<Trainer> {
        let seed32 = (cfg.seed ^ (cfg.seed >> 32)) as u32;
        let net = LoraNetwork::new(dit.config(), cfg.network_dim, cfg.network_alpha, seed32)?;
        Trainer::with_network(dit, items, cfg, net)
    }

    /// A new run that trains `net` (e.g. read from `--network_weights`).
    pub fn with_network(
        dit: WanDit,
        items: Vec<CacheItem>,
        cfg: TrainConfig,
        net: LoraNetwork,
    ) -> Result<Trainer> {
        cfg.timesteps.validate()?;
        if items.is_empty() {
            return Err(Error::InvalidArgument("no training items".into()));
        }
        let lr_ok = cfg.learning_rate.is_finite() && cfg.learning_rate > 0.0;
        if !lr_ok || cfg.max_grad_norm.is_nan() || cfg.max_grad_norm < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "learning_rate {} must be positive and max_grad_norm {} >= 0",
                cfg.learning_rate, cfg.max_grad_norm
            )));
        }
        Ok(Trainer {
            dit,
            items,
            rng: TrainRng::new(cfg.seed),
            opt: AdamW::new(cfg.adamw),
            cfg,
            net,
            step: 0,
            epoch: 0,
            position: 0,
        })
    }

    /// The total number of optimizer steps of the run.
    pub fn total_steps(&self) -> usize {
        match self.cfg.max_train_epochs {
            Some(e) => e * self.items.len(),
            None => self.cfg.max_train_steps,
        }
    }

    /// Whether every step has been taken.
    pub fn is_done(&self) -> bool {
        self.step >= self.total_steps()
    }

    /// The network being trained.
    pub fn network(&self) -> &LoraNetwork {
        &self.net
    }

    /// Optimizer steps taken.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.epoch
    }

    /// One optimizer step on the next item: noise and timestep drawn from the run's stream,
    /// loss and gradients, clipping, AdamW at the scheduled learning rate.
    pub fn step(&mut self) -> Result<StepReport> {
        if self.is_done() {
            return Err(Error::InvalidArgument(format!(
                "training is done: all {} steps were taken",
                self.total_steps()
            )));
        }
        let order = epoch_order(self.items.len(), self.cfg.seed, self.epoch);
        let item = &self.items[order[self.position]];
        let c = self.dit.config();
        let sample = item.load(c.in_dim, c.text_dim)?;
        let mut dims = vec![1];
        dims.extend_from_slice(sample.latents.dims());
        let x0 = sample.latents.reshape(dims.as_slice())?;
        let eps = noise(self.rng.next_u64(), &dims)?;
        let level = self.cfg.timesteps.sample(&mut self.rng);
        let (loss, mut grads) =
            loss_and_grads(&self.dit, &self.net, &x0, &eps, &[level], &[sample.t5])?;
        if !loss.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "step {}: the loss is {loss} (a non-finite cache or a diverged run)",
                self.step + 1
            )));
        }
        let grad_norm = clip_grad_norm(&mut grads, self.cfg.max_grad_norm)?;
        let total = self.total_steps();
        let factor = self
            .cfg
            .lr_scheduler
            .factor(self.step, self.cfg.lr_warmup_steps, total);
        let lr = (self.cfg.learning_rate as f64 * factor) as f32;
        self.opt.step(&mut self.net, &grads, lr)?;
        let report = StepReport {
            step: self.step + 1,
            epoch: self.epoch,
            loss,
            lr,
            grad_norm,
        };
        self.step += 1;
        self.position += 1;
        if self.position == self.items.len() {
            self.position = 0;
            self.epoch += 1;
        }
        Ok(report)
    }

    /// musubi's `ss_*` metadata of the network.
    fn metadata(&self) -> BTreeMap<String, String> {
        let mut meta = self.cfg.metadata.clone();
        meta.extend([
            ("ss_base_model_version".into(), "wan2.1".into()),
            (
                "ss_learning_rate".into(),
                format!("{:?}", self.cfg.learning_rate),
            ),
            (
                "ss_lr_scheduler".into(),
                format!("{:?}", self.cfg.lr_scheduler).to_lowercase(),
            ),
            ("ss_max_train_steps".into(), self.total_steps().to_string()),
            ("ss_seed".into(), self.cfg.seed.to_string()),
            ("ss_steps".into(), self.step.to_string()),
            ("ss_epoch".into(), self.epoch.to_string()),
            ("ss_num_train_items".into(), self.items.len().to_string()),
            ("ss_training_comment".into(), "trained with wanrt".into()),
            ("ss_network_dropout".into(), "None".into()),
            ("ss_gradient_checkpointing".into(), "True".into()),
            ("ss_gradient_accumulation_steps".into(), "1".into()),
            (
                "ss_lr_warmup_steps".into(),
                self.cfg.lr_warmup_steps.to_string(),
            ),
            (
                "ss_max_grad_norm".into(),
                format!("{:?}", self.cfg.max_grad_norm),
            ),
            (
                "ss_optimizer".into(),
                format!(
                    "torch.optim.adamw.AdamW(weight_decay={:?},betas=({:?}, {:?}),eps={:?})",
                    self.cfg.adamw.weight_decay,
                    self.cfg.adamw.beta1,
                    self.cfg.adamw.beta2,
                    self.cfg.adamw.eps
                ),
            ),
            (
                "ss_timestep_sampling".into(),
                format!("{:?}", self.cfg.timesteps.sampling).to_lowercase(),
            ),
            (
                "ss_discrete_flow_shift".into(),
                format!("{:?}", self.cfg.timesteps.discrete_flow_shift),
            ),
            (
                "ss_sigmoid_scale".into(),
                format!("{:?}", self.cfg.timesteps.sigmoid_scale),
            ),
            ("modelspec.sai_model_spec".into(), "1.0.0".into()),
            ("modelspec.architecture".into(), "wan2.1/lora".into()),
            (
                "modelspec.implementation".into(),
                "https://github.com/Wan-Video/Wan2.1".into(),
            ),
        ]);
        meta
    }

    /// Writes the LoRA in musubi's format (`lora_unet_…` keys, `.alpha`, `ss_*` metadata)
    /// atomically at `path`.
    pub fn save_lora(&self, path: &Path) -> Result<()> {
        self.net.save(path, &self.metadata())
    }

    /// Writes everything a resume needs into the folder `dir` (created if missing):
    /// `lora.safetensors`, `optimizer.safetensors` (AdamW's f32 moments) and `state.json`
    /// (step, epoch, position, random stream), each atomically, `state.json` last and naming
    /// the step the two others must carry (so a save interrupted midway is refused on resume).
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut meta = self.metadata();
        self.net.save(&dir.join("lora.safetensors"), &meta)?;
        let moments: Vec<(String, Tensor)> = self
            .opt
            .moments
            .iter()
            .flat_map(|(k, m)| {
                [
                    (format!("{k}.exp_avg"), &m.m),
                    (format!("{k}.exp_avg_sq"), &m.v),
                ]
                .map(|(n, v)| Tensor::from_f32(v.clone(), [v.len()]).map(|t| (n, t)))
            })
            .collect::<Result<_>>()?;
        let refs: Vec<(&str, &Tensor)> = moments.iter().map(|(n, t)| (n.as_str(), t)).collect();
        meta.retain(|k, _| k == "ss_steps");
        safetensors::write_file(&dir.join("optimizer.safetensors"), &refs, &meta)?;
        let progress = Progress {
            step: self.step,
            epoch: self.epoch,
            position: self.position,
            seed: self.rng.seed(),
            rng_position: self.rng.position().to_string(),
            adam_steps: self.opt.steps,
        };
        let json = serde_json::to_vec_pretty(&progress).map_err(|e| {
            Error::InvalidArgument(format!("training state does not serialise: {e}"))
        })?;
        atomic::write_atomic(&dir.join("state.json"), |w| w.write_all(&json))
    }

    /// Continues a run saved by [`Trainer::save_state`] in `dir`, on the same model, items and
    /// config: the following steps are those the uninterrupted run would have taken.
    pub fn resume(
        dit: WanDit,
        items: Vec<CacheItem>,
        cfg: TrainConfig,
        dir: &Path,
    ) -> Result<Trainer> {
        let state_path = dir.join("state.json");
        let text = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let p: Progress = serde_json::from_slice(&text)
            .map_err(|e| Error::bad_file(&state_path, format!("not a training state: {e}")))?;
        let bad = |path: &Path, what: String| Error::bad_file(path, what);
        let lora_path = dir.join("lora.safetensors");
        let lora = Lora::open(&lora_path)?;
        let opt_path = dir.join("optimizer.safetensors");
        let opt_file = crate::io::open(&opt_path)?;
        for (path, meta) in [
            (&lora_path, &lora.metadata),
            (&opt_path, &opt_file.metadata),
        ] {
            if meta.get("ss_steps") != Some(&p.step.to_string()) {
                return Err(bad(
                    path,
                    format!(
                        "not saved at step {} like state.json (an interrupted save?)",
                        p.step
                    ),
                ));
            }
        }
        if p.seed != cfg.seed {
            return Err(Error::InvalidArgument(format!(
                "the state was saved by a run with seed {}, not {}",
                p.seed, cfg.seed
            )));
        }
        let net = LoraNetwork::from_lora(&lora)?;
        let mut t = Trainer::with_network(dit, items, cfg, net)?;
        let rng_position = p
            .rng_position
            .parse::<u128>()
            .map_err(|e| bad(&state_path, format!("rng_position: {e}")))?;
        t.rng = TrainRng::at(p.seed, rng_position);
        t.opt.steps = p.adam_steps;
        for name in t.net.modules().keys() {
            for part in ["down", "up"] {
                let key = format!("{name}.{part}");
                let get = |s: &str| -> Result<Vec<f32>> {
                    let n = format!("{key}.{s}");
                    match opt_file.tensors.get(&n) {
                        Some(v) => v.to_f32_vec(),
                        None => Err(bad(&opt_path, format!("no tensor `{n}`"))),
                    }
                };
                if p.adam_steps > 0 {
                    t.opt.moments.insert(
                        key.clone(),
                        Moments {
                            m: get("exp_avg")?,
                            v: get("exp_avg_sq")?,
                        },
                    );
                }
            }
        }
        if p.position >= t.items.len() {
            return Err(bad(
                &state_path,
                format!("position {} of {} items", p.position, t.items.len()),
            ));
        }
        (t.step, t.epoch, t.position) = (p.step, p.epoch, p.position);
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::config::ModelType;
    use crate::model::dit::{weight_shapes, DitConfig};
    use crate::tensor::{random, DType};
    use crate::train::cache::list_items;

    fn dit() -> WanDit {
        let c = DitConfig {
            model_type: ModelType::T2v,
            dim: 16,
            ffn_dim: 32,
            num_heads: 2,
            num_layers: 2,
            in_dim: 16,
            out_dim: 16,
            text_dim: 12,
            freq_dim: 8,
            text_len: 6,
            eps: 1e-6,
            patch_size: [1, 2, 2],
        };
        let w = weight_shapes(&c)
            .into_iter()
            .enumerate()
            .map(|(i, (n, d))| {
                (
                    n,
                    random::weight(&d, DType::BF16, 40 + i as u32, 0.0, 0.4).unwrap(),
                )
            })
            .collect();
        WanDit::new(w, c).unwrap()
    }

    /// Writes musubi caches of two items (an image and a video window) into `dir`.
    fn write_caches(dir: &Path, arch: &str) {
        let meta = BTreeMap::from([
            ("architecture".to_string(), arch.to_string()),
            ("format_version".to_string(), "1.0.1".to_string()),
        ]);
        for (i, (latent, text)) in [
            ("cat_0032x0032_wan.safetensors", "cat"),
            ("clip_00000-005_0032x0032_wan.safetensors", "clip"),
        ]
        .iter()
        .enumerate()
        {
            let l = random::tensor(&[16, 2, 4, 4], 70 + i as u32, 0.0, 1.0).unwrap();
            let l = l.to_dtype(DType::BF16).unwrap();
            safetensors::write_file(&dir.join(latent), &[("latents_2x4x4_bfloat16", &l)], &meta)
                .unwrap();
            let t = random::tensor(&[3 + i, 12], 80 + i as u32, 0.0, 1.0).unwrap();
            let t = t.to_dtype(DType::BF16).unwrap();
            let te = dir.join(format!("{text}_wan_te.safetensors"));
            safetensors::write_file(&te, &[("varlen_t5_bfloat16", &t)], &meta).unwrap();
        }
    }

    fn cfg() -> TrainConfig {
        TrainConfig {
            network_dim: 2,
            learning_rate: 1e-3,
            lr_scheduler: Scheduler::Cosine,
            lr_warmup_steps: 1,
            max_train_steps: 6,
            seed: 11,
            ..TrainConfig::default()
        }
    }

    /// Saved after 3 of 6 steps and resumed, a run takes exactly the steps of an uninterrupted
    /// one (same losses, bit for bit) and ends with the same LoRA.
    #[test]
    fn resume_reproduces_the_uninterrupted_run_bit_for_bit() {
        let tmp = tempfile::tempdir().unwrap();
        write_caches(tmp.path(), "wan");
        let items = list_items(tmp.path()).unwrap();
        assert_eq!(items.len(), 2);

        let mut whole = Trainer::new(dit(), items.clone(), cfg()).unwrap();
        let mut want = Vec::new();
        while !whole.is_done() {
            want.push(whole.step().unwrap());
        }
        assert_eq!(want.len(), 6);
        assert_eq!(
            want.iter().map(|r| r.epoch).collect::<Vec<_>>(),
            [0, 0, 1, 1, 2, 2]
        );
        assert!(want[0].lr == 0.0 && want[1].lr > want[5].lr && want.iter().all(|r| r.loss > 0.0));
        assert!(whole.step().is_err());

        let mut first = Trainer::new(dit(), items.clone(), cfg()).unwrap();
        let mut got: Vec<StepReport> = (0..3).map(|_| first.step().unwrap()).collect();
        let state = tmp.path().join("state");
        first.save_state(&state).unwrap();
        drop(first);
        let mut resumed = Trainer::resume(dit(), items.clone(), cfg(), &state).unwrap();
        while !resumed.is_done() {
            got.push(resumed.step().unwrap());
        }
        for (a, b) in want.iter().zip(&got) {
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
            assert_eq!((a.step, a.epoch, a.lr), (b.step, b.epoch, b.lr));
        }
        for (name, p) in whole.network().modules() {
            let q = &resumed.network().modules()[name];
            assert_eq!(
                p.up.to_f32_vec().unwrap(),
                q.up.to_f32_vec().unwrap(),
                "{name}"
            );
        }

        // The final LoRA is a musubi file with its metadata, and it changes the model.
        let out = tmp.path().join("out.safetensors");
        whole.save_lora(&out).unwrap();
        let lora = Lora::open(&out).unwrap();
        assert_eq!(lora.metadata["ss_steps"], "6");
        assert_eq!(lora.metadata["ss_network_dim"], "2");
        assert!(lora.modules["blocks.1.ffn.2"]
            .low_rank
            .as_ref()
            .is_some_and(|l| { l.up.to_f32_vec().unwrap().iter().any(|&v| v != 0.0) }));

        // A torn save (state.json of another step) and a different seed are refused.
        let progress = std::fs::read_to_string(state.join("state.json")).unwrap();
        std::fs::write(
            state.join("state.json"),
            progress.replace("\"step\": 3", "\"step\": 4"),
        )
        .unwrap();
        assert!(Trainer::resume(dit(), items.clone(), cfg(), &state).is_err());
        std::fs::write(state.join("state.json"), &progress).unwrap();
        let other = TrainConfig { seed: 12, ..cfg() };
        assert!(Trainer::resume(dit(), items, other, &state).is_err());
    }

    #[test]
    fn caches_of_another_model_or_without_text_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_caches(tmp.path(), "hunyuan_video");
        let items = list_items(tmp.path()).unwrap();
        let err = Trainer::new(dit(), items, cfg())
            .unwrap()
            .step()
            .unwrap_err();
        assert!(err.to_string().contains("hunyuan_video"), "{err}");
        std::fs::remove_file(tmp.path().join("cat_wan_te.safetensors")).unwrap();
        let err = list_items(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("cat_wan_te.safetensors"), "{err}");
    }
}
