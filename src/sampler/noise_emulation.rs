//! The device noise kernel (`philox_normal_f32` of `kernels/sampler.cu`) emulated on the CPU:
//! its operation sequence written out in Rust, one IEEE operation per intrinsic (`__dadd_rn` is
//! `+`, `__dmul_rn` is `*`, …: Rust never contracts them) and its constants read from the kernel
//! file's bit patterns, compared bit for bit with [`super::fill_normal`] over many seeds, streams
//! and counters (including counters past 2³² blocks).

use super::noise::{fill_normal, philox4x32_10, Stream, INV_FACT, INV_ODD};

const KERNEL: &str = include_str!("../../kernels/sampler.cu");

/// The `0x…ull` values of the kernel file's `#define` line or array named by `name`.
fn kernel_bits(name: &str) -> Vec<u64> {
    let start = KERNEL
        .find(name)
        .unwrap_or_else(|| panic!("{name} in kernels/sampler.cu"));
    let rest = &KERNEL[start + name.len()..];
    let end = if name.starts_with("#define") {
        rest.find('\n')
    } else {
        rest.find("};")
    };
    rest[..end.expect("the definition ends")]
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| w.strip_prefix("0x")?.strip_suffix("ull"))
        .map(|h| u64::from_str_radix(h, 16).expect("hex"))
        .collect()
}

fn d(bits: u64) -> f64 {
    f64::from_bits(bits)
}

struct Device {
    inv_fact: Vec<f64>,
    inv_odd: Vec<f64>,
    ln_2: f64,
    sqrt_2: f64,
    tau: f64,
    two_pow_m32: f64,
}

impl Device {
    fn load() -> Device {
        let one = |name: &str| d(kernel_bits(name)[0]);
        Device {
            inv_fact: kernel_bits("INV_FACT_BITS").into_iter().map(d).collect(),
            inv_odd: kernel_bits("INV_ODD_BITS").into_iter().map(d).collect(),
            ln_2: one("#define LN_2_BITS"),
            sqrt_2: one("#define SQRT_2_BITS"),
            tau: one("#define TAU_BITS"),
            two_pow_m32: one("#define TWO_POW_M32_BITS"),
        }
    }

    /// `ln_unit` of the kernel.
    fn ln_unit(&self, x: f64) -> f64 {
        let bits = x.to_bits();
        let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
        if m >= self.sqrt_2 {
            m *= 0.5;
            e += 1;
        }
        let s = (m - 1.0) / (m + 1.0);
        let s2 = s * s;
        let mut p = 0.0;
        for k in (0..=10).rev() {
            p = p * s2 + self.inv_odd[k];
        }
        e as f64 * self.ln_2 + (2.0 * s) * p
    }

    /// `sin_cos_turns` of the kernel: `(sin, cos)`.
    fn sin_cos_turns(&self, t: f64) -> (f64, f64) {
        let q = (t * 4.0).round(); // CUDA's round(): half away from zero, as Rust's
        let a = (t - q * 0.25) * self.tau;
        let a2 = a * a;
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for k in (0..=9usize).rev() {
            let even = k % 2 == 0;
            if k <= 8 {
                let f = self.inv_fact[2 * k + 1];
                s = s * a2 + if even { f } else { -f };
            }
            let f = self.inv_fact[2 * k];
            c = c * a2 + if even { f } else { -f };
        }
        s *= a;
        match q as u32 % 4 {
            0 => (s, c),
            1 => (c, -s),
            2 => (-s, -c),
            _ => (-c, s),
        }
    }

    fn box_muller(&self, a: u32, b: u32) -> [f32; 2] {
        let u = (a as f64 + 0.5) * self.two_pow_m32;
        let r = (-2.0 * self.ln_unit(u)).sqrt(); // __dsqrt_rn: correctly rounded, as Rust's
        let (s, c) = self.sin_cos_turns(b as f64 * self.two_pow_m32);
        [(r * c) as f32, (r * s) as f32]
    }

    /// Elements `first..first + n` as the kernel's threads write them (one Philox block each).
    fn normals(&self, seed: u64, stream: u64, first: u64, n: usize) -> Vec<f32> {
        (first..first + n as u64)
            .map(|k| {
                let b = k / 4;
                let c = [
                    b as u32,
                    (b >> 32) as u32,
                    stream as u32,
                    (stream >> 32) as u32,
                ];
                let r = philox4x32_10(c, [seed as u32, (seed >> 32) as u32]);
                let [z0, z1] = self.box_muller(r[0], r[1]);
                let [z2, z3] = self.box_muller(r[2], r[3]);
                [z0, z1, z2, z3][(k % 4) as usize]
            })
            .collect()
    }
}

#[test]
fn the_kernel_constants_are_the_cpu_generators() {
    let dev = Device::load();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&dev.inv_fact), bits(&INV_FACT));
    assert_eq!(bits(&dev.inv_odd), bits(&INV_ODD));
    assert_eq!(dev.ln_2, std::f64::consts::LN_2);
    assert_eq!(dev.sqrt_2, std::f64::consts::SQRT_2);
    assert_eq!(dev.tau, std::f64::consts::TAU);
    assert_eq!(dev.two_pow_m32, 1.0 / 4_294_967_296.0);
}

#[test]
fn the_emulated_kernel_has_the_cpu_generators_bits() {
    let dev = Device::load();
    let seeds = [0u64, 1, 42, 0xdead_beef_1234_5678, u64::MAX];
    let streams = [
        Stream::Latent,
        Stream::Renoise { step: 0 },
        Stream::Renoise { step: 48 },
    ];
    // Counters: the start, odd offsets, and blocks past 2^32 (the counter's high word).
    let ranges = [(0u64, 4099usize), (77, 513), (4 * (1u64 << 32) - 6, 40)];
    let mut compared = 0;
    for seed in seeds {
        for stream in streams {
            for (first, n) in ranges {
                let mut cpu = vec![0.0f32; n];
                fill_normal(seed, stream, first, &mut cpu);
                let emulated = dev.normals(seed, stream.id(), first, n);
                for (k, (a, b)) in cpu.iter().zip(&emulated).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "seed {seed} {stream:?} element {}",
                        first + k as u64
                    );
                }
                compared += n;
            }
        }
    }
    assert!(compared > 60_000);
}
