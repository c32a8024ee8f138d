//! `wanrt devices`: the CUDA devices wanrt can run on, one line each (`--json`: one JSON array).
//! A build without CUDA, or a machine without the NVIDIA driver, lists none and says why.

use serde_json::json;
use wanrt::backend::{cuda, cuda_devices};

/// Prints the devices; returns false (after printing `error: ...`) when the driver fails.
pub fn run(as_json: bool) -> bool {
    let Some(devices) = crate::report::reported("devices: ", cuda_devices) else {
        return false;
    };
    if as_json {
        let list: Vec<_> = devices
            .iter()
            .map(|d| {
                json!({
                    "index": d.ordinal,
                    "name": d.name,
                    "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                    "total_memory": d.total_memory,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return true;
    }
    if devices.is_empty() {
        let why = cuda::device_available()
            .err()
            .map_or_else(String::new, |e| format!(" ({e})"));
        println!("no CUDA devices{why}");
    }
    for d in &devices {
        let (major, minor) = d.compute_capability;
        println!(
            "cuda:{}  {}  sm_{major}{minor}  {:.1} GiB",
            d.ordinal,
            d.name,
            d.total_memory as f64 / (1u64 << 30) as f64
        );
    }
    true
}
