//! The Wan2.1 VAE's tensors by name and shape, for building random models (benchmarks, the
//! demo) without a checkpoint.

use super::VaeConfig;

/// Every tensor [`super::WanVae::new`] takes for `cfg` (original Wan names), with its shape:
/// the encoder (wan-architecture.md §2.3), `conv1`, `conv2` and the decoder (§2.4), each conv's
/// weight followed by its bias.
pub fn weight_shapes(cfg: &VaeConfig) -> Vec<(String, Vec<usize>)> {
    let mut s = Shapes(Vec::new());
    let (stages, z) = (cfg.dim_mult.len(), cfg.z_dim);
    let enc: Vec<usize> = std::iter::once(1)
        .chain(cfg.dim_mult.iter().copied())
        .map(|m| m * cfg.dim)
        .collect();
    s.layer("encoder.conv1", &[enc[0], 3, 3, 3, 3]);
    let mut k = 0;
    for i in 0..stages {
        let mut cin = enc[i];
        for _ in 0..cfg.num_res_blocks {
            s.residual(&format!("encoder.downsamples.{k}"), cin, enc[i + 1]);
            cin = enc[i + 1];
            k += 1;
        }
        if i + 1 < stages {
            let p = format!("encoder.downsamples.{k}");
            s.layer(&format!("{p}.resample.1"), &[cin, cin, 3, 3]);
            if cfg.temperal_downsample[i] {
                s.layer(&format!("{p}.time_conv"), &[cin, cin, 3, 1, 1]);
            }
            k += 1;
        }
    }
    s.middle_head("encoder", enc[stages], 2 * z);
    s.layer("conv1", &[2 * z, 2 * z, 1, 1, 1]);
    let dec: Vec<usize> = std::iter::once(cfg.dim_mult[stages - 1])
        .chain(cfg.dim_mult.iter().rev().copied())
        .map(|m| m * cfg.dim)
        .collect();
    s.layer("conv2", &[z, z, 1, 1, 1]);
    s.layer("decoder.conv1", &[dec[0], z, 3, 3, 3]);
    s.middle("decoder", dec[0]);
    let (mut cin, mut k) = (dec[0], 0);
    for i in 0..stages {
        let cout = dec[i + 1];
        for _ in 0..=cfg.num_res_blocks {
            s.residual(&format!("decoder.upsamples.{k}"), cin, cout);
            cin = cout;
            k += 1;
        }
        if i + 1 < stages {
            let p = format!("decoder.upsamples.{k}");
            if cfg.temperal_downsample[stages - 2 - i] {
                s.layer(&format!("{p}.time_conv"), &[2 * cout, cout, 3, 1, 1]);
            }
            s.layer(&format!("{p}.resample.1"), &[cout / 2, cout, 3, 3]);
            cin = cout / 2;
            k += 1;
        }
    }
    s.head("decoder", cin, 3);
    s.0
}

/// The list being built.
struct Shapes(Vec<(String, Vec<usize>)>);

impl Shapes {
    fn push(&mut self, name: String, dims: &[usize]) {
        self.0.push((name, dims.to_vec()));
    }

    /// `{p}.weight` and its bias `{p}.bias [dims[0]]`.
    fn layer(&mut self, p: &str, dims: &[usize]) {
        self.push(format!("{p}.weight"), dims);
        self.push(format!("{p}.bias"), &[dims[0]]);
    }

    /// The residual block `{p}`.
    fn residual(&mut self, p: &str, cin: usize, cout: usize) {
        self.push(format!("{p}.residual.0.gamma"), &[cin, 1, 1, 1]);
        self.layer(&format!("{p}.residual.2"), &[cout, cin, 3, 3, 3]);
        self.push(format!("{p}.residual.3.gamma"), &[cout, 1, 1, 1]);
        self.layer(&format!("{p}.residual.6"), &[cout, cout, 3, 3, 3]);
        if cin != cout {
            self.layer(&format!("{p}.shortcut"), &[cout, cin, 1, 1, 1]);
        }
    }

    /// `{side}.middle`: residual, attention, residual, all `c` wide.
    fn middle(&mut self, side: &str, c: usize) {
        self.residual(&format!("{side}.middle.0"), c, c);
        self.push(format!("{side}.middle.1.norm.gamma"), &[c, 1, 1]);
        self.layer(&format!("{side}.middle.1.to_qkv"), &[3 * c, c, 1, 1]);
        self.layer(&format!("{side}.middle.1.proj"), &[c, c, 1, 1]);
        self.residual(&format!("{side}.middle.2"), c, c);
    }

    /// `{side}.head`: norm, SiLU and a conv from `c` to `out` channels.
    fn head(&mut self, side: &str, c: usize, out: usize) {
        self.push(format!("{side}.head.0.gamma"), &[c, 1, 1, 1]);
        self.layer(&format!("{side}.head.2"), &[out, c, 3, 3, 3]);
    }

    fn middle_head(&mut self, side: &str, c: usize, out: usize) {
        self.middle(side, c);
        self.head(side, c, out);
    }
}
