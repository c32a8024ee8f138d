//! `wanrt devices`, run as a process: lines and `--json`. Without CUDA (this build or the
//! machine) it lists nothing, says why and succeeds; with devices each one is described.

use std::process::Command;

fn devices(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wanrt"))
        .arg("devices")
        .args(args)
        .output()
        .expect("run wanrt");
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    (out.status.success(), text)
}

#[test]
fn json_lists_every_device() {
    let (ok, text) = devices(&["--json"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON array");
    let list = v.as_array().expect("an array");
    for (i, d) in list.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert!(d["name"].as_str().is_some_and(|n| !n.is_empty()), "{d}");
        assert!(d["total_memory"].as_u64().is_some_and(|m| m > 0), "{d}");
        assert!(d["compute_capability"]
            .as_str()
            .is_some_and(|c| c.contains('.')));
    }
    let (ok, lines) = devices(&[]);
    assert!(ok);
    if list.is_empty() {
        assert!(lines.starts_with("no CUDA devices ("), "{lines}");
    } else {
        assert_eq!(lines.lines().count(), list.len(), "{lines}");
        assert!(lines.starts_with("cuda:0  "), "{lines}");
    }
}
