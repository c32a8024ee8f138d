#!/usr/bin/env bash
# Builds, here (no GPU needed), the folder a GPU machine with no Rust and no network runs:
# release `--features cuda` binaries, stripped (the library's unit tests, which hold the kernel
# tests `gpu_*`; every integration test named tests/gpu_*.rs or tests/cuda_*.rs; the fixture
# harness; `wanrt`), the DiT fixtures they read, the runner (run.py, from .ci/gpu_runner.py) and
# benches/gpu_vs_torch.py with benches/wan_diffusers.py; the executables packed as bin.tar.xz. Fails if the folder exceeds 60 MiB
# (the device tool carries 64 MiB).
#
# Usage: .ci/gpu-bundle.sh [DIR]     (default: gpu-bundle/ here, which .gitignore lists)
# Then, on the GPU machine: python3 DIR/run.py   (writes DIR/report/ or $OUT/: report.md, .json)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$PWD/gpu-bundle}
fixtures=${WANRT_FIXTURES:-../shared/fixtures}
limit_mib=60

.ci/cuda-toolchain.sh >/dev/null
rm -rf "$out"
mkdir -p "$out/bin" "$out/fixtures/cases" "$out/fixtures/models"

# Test targets: the library, the fixture harness, and the GPU integration tests that exist.
tests=(--lib --test fixtures)
for t in tests/gpu_*.rs tests/cuda_*.rs; do
    [[ -f "$t" ]] && tests+=(--test "$(basename "$t" .rs)")
done
artifacts=$(mktemp)
trap 'rm -f "$artifacts"' EXIT
cargo build --release --features cuda --bin wanrt --message-format=json-render-diagnostics \
    >"$artifacts"
cargo test --release --features cuda "${tests[@]}" --no-run \
    --message-format=json-render-diagnostics >>"$artifacts"

# Each executable under the name run.py expects.
python3 - "$artifacts" "$out/bin" <<'PY'
import json, os, shutil, sys
artifacts, dest = sys.argv[1], sys.argv[2]
for line in open(artifacts):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe:
        continue
    target, test = m["target"], m["profile"]["test"]
    if test and target["src_path"].endswith("src/lib.rs"):
        name = "wanrt-lib-tests"
    elif target["name"] == "fixtures":
        name = "fixtures"
    elif test:
        name = "test-" + target["name"]
    else:
        name = target["name"]
    if os.path.exists(f"{dest}/{name}"):
        continue  # `wanrt` again, built for the integration tests: keep the first
    shutil.copy(exe, f"{dest}/{name}")
    print(f"bundle: bin/{name}")
PY
strip --strip-unneeded "$out"/bin/*
# The executables travel xz-compressed (about 5x smaller); run.py unpacks them before the first step.
tar -C "$out" -cf - bin | xz -T0 -6 >"$out/bin.tar.xz"
rm -rf "$out/bin"

# The fixture cases the GPU tests run (the DiT cases; the pipeline, sampler, VAE and UMT5 cases
# of tests/cuda_pipeline.rs; lora_merge_distill for its LoRA) and the model files they name (only
# those, to stay under the size limit).
for case in "$fixtures"/cases/{dit_forward*,pipeline_*,sampler_*,vae_decode_f32,vae_encode_f32,t5_encode_f32,lora_merge_distill}/; do
    cp -r "$case" "$out/fixtures/cases/"
done
python3 - "$fixtures" "$out/fixtures" <<'PY'
import glob, json, os, shutil, sys
src, dest = sys.argv[1], sys.argv[2]
models = set()
for case in glob.glob(f"{dest}/cases/*/case.json"):
    for key, value in json.load(open(case)).items():
        if isinstance(value, str) and "models/" in value:
            models.add(os.path.normpath(value).split("models/")[1])
for m in sorted(models):
    if os.path.isdir(f"{src}/models/{m}"):
        shutil.copytree(f"{src}/models/{m}", f"{dest}/models/{m}", dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(f"{dest}/models/{m}"), exist_ok=True)
        shutil.copy(f"{src}/models/{m}", f"{dest}/models/{m}")
    print(f"bundle: fixtures/models/{m}")
PY
chmod -R u+w "$out/fixtures"

cp .ci/gpu_runner.py "$out/run.py"
cp benches/gpu_vs_torch.py benches/wan_diffusers.py "$out/"
echo "wanrt $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty) built $(date -u +%FT%TZ)" \
    >"$out/BUNDLE"

size=$(du -sb "$out" | cut -f1)
echo "bundle: $out, $((size / 1024 / 1024)) MiB"
if ((size > limit_mib * 1024 * 1024)); then
    echo "bundle: larger than $limit_mib MiB" >&2
    exit 1
fi
