#!/usr/bin/env bash
# The GPU path, measured: run on a machine with a CUDA device, from the repository root, in
# the project's environment (pip install -e '.[dev]').
#
#   bash scripts/gpu_check.sh [OUT]        (OUT default runs/gpu-check)
#
# 1. the tests with CUDA paths (devices, estimators, the memory budget, smoothing, attacks,
#    the matrix), on the GPU;
# 2. `defend bench device`: VarNet slices/s, hallucination attack iterations/s, certify
#    noisy copies/s and the peak device memory of each, at fastMRI's size (15 coils,
#    640 x 368 k-space) with the paper preset's models;
# 3. a short timed slice of the paper preset: its recon models at fastMRI's sizes on 320 px
#    data, 4 samples a cell, the standard and the smoothed row against the hallucination
#    attack (150 iterations) and random signs;
# then writes the figures into docs/benchmark.md between its "gpu-figures" markers.
# Without a CUDA device it stops at once with one line.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu-check}"
PY="${PYTHON:-python}"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device here: scripts/gpu_check.sh measures the GPU path" >&2
  exit 1
fi
mkdir -p "$OUT"
start=$(date +%s)
"$PY" -m pytest -q -x tests/test_cli_robust.py tests/test_estimators.py tests/test_memory.py \
  tests/test_smooth.py tests/test_torch_attack.py tests/test_matrix.py 2>&1 | tail -3 \
  | tee "$OUT/tests.txt"
tests_s=$(( $(date +%s) - start ))
"$PY" -m defend.cli bench device "$OUT/device" --out "$OUT/device.json" | tee "$OUT/device.txt"
cat > "$OUT/paper-slice.toml" <<'TOML'
# a short slice of the paper preset: its recon models and attack iterations, few cells
[run]
n = 4
tasks = ["recon"]
[data]
size = 320
volumes = 6
slices = 2
coils = 8
[recon]
models = ["unet", "varnet"]
epochs = 2
defences = ["none", "smoothing"]
attacks = ["hallucination", "noise"]
eps = [0.1]
[recon.model_options.unet]
chans = 32
num_pool_layers = 4
[recon.model_options.varnet]
num_cascades = 12
sens_chans = 8
sens_pools = 4
chans = 18
pools = 4
[attack.hallucination]
max_iter = 150
[smoothing]
n0 = 100
recon_n = 2000
alpha = 0.001
denoiser_epochs = 2
TOML
slice_start=$(date +%s)
"$PY" -m defend.cli matrix "$OUT/paper-slice.toml" --out "$OUT/paper-slice" --no-progress \
  > "$OUT/paper-slice.txt" 2>&1 || true
slice_s=$(( $(date +%s) - slice_start ))
"$PY" - "$OUT" "$tests_s" "$slice_s" <<'PYTHON'
"""Write the figures between docs/benchmark.md's gpu-figures markers."""
import csv, datetime, json, re, sys
from pathlib import Path
out, tests_s, slice_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
device = json.loads((out / "device.json").read_text())
cells = {}
with open(out / "paper-slice" / "matrix.csv") as f:
    for row in csv.DictReader(f):
        cells.setdefault((row["model"], row["defence"], row["attack"], row["adaptive"]), row)
plan = [line for line in (out / "paper-slice.txt").read_text().splitlines()
        if line.startswith(("plan:", "estimate:"))]
text = [f"Measured {datetime.date.today()} by `bash scripts/gpu_check.sh` on {device['device']}.",
        "", *[line for line in (out / "device.txt").read_text().splitlines()[1:]
              if not line.startswith("wrote ")], "",
        f"Tests with CUDA paths: {(out / 'tests.txt').read_text().strip().splitlines()[-1]}"
        f" ({tests_s} s).", "",
        f"Paper-preset slice (`{out}/paper-slice.toml`: recon U-Net and VarNet at fastMRI's "
        f"sizes, 320 px, 4 samples a cell): {slice_s} s in all, builds included.", "",
        *[f"    {line}" for line in plan], "",
        "| model | defence | attack | seconds a cell |", "|---|---|---|---|"]
text += [f"| {m} | {d} | {a}{'' if ad == 'none' else '+' + ad} | {float(r['seconds']):.1f} |"
         for (m, d, a, ad), r in cells.items()]
docs = Path("docs/benchmark.md")
body = docs.read_text()
pattern = re.compile(r"(<!-- gpu-figures -->\n).*?(<!-- /gpu-figures -->)", re.S)
if not pattern.search(body):
    sys.exit("error: docs/benchmark.md has no <!-- gpu-figures --> markers")
docs.write_text(pattern.sub(lambda m: m[1] + "\n".join(text) + "\n" + m[2], body))
print(f"wrote the figures into {docs}")
PYTHON
