#!/usr/bin/env bash
# The one script a GPU session runs (device tool: command `bash bench/run_on_h200.sh`,
# timeout_s 540). Every step has its own `timeout`, so the whole script ends within 8 minutes;
# each step writes its JSON as it measures, so a step cut short still returns its figures.
#   1. numerics: the public fixtures' CUT3R and LLaVA-Video, float32 CUDA vs CPU (<= 1e-4, same
#      greedy tokens) and bfloat16 errors                              -> $OUT/numerics.json
#   2. the bench at tiny size on CUDA (a quick check of the CUDA path, CUDA graphs included)
#                                                                      -> $OUT/bench_tiny_cuda.json
#   3. the bench at the released size, bf16 + SDPA, 32 frames; last, the warm ask from a static
#      KV cache with the one-token step as a CUDA graph (torch.compile reduce-overhead)
#                                                                      -> $OUT/bench.json
#      with torch.profiler tables of a CUT3R step, warm ask, warm localize, cold query
#                                                                      -> $OUT/profile.txt
# Everything else it prints goes to $OUT/session.log (at most 6 files come back).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/loc3r_h200_out}
mkdir -p "$OUT"
export PYTHONPATH=loc3r_ros PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/session.log") 2>&1
started=$(date +%s)
step() { echo "=== $(date -u +%H:%M:%S) (+$(($(date +%s) - started)) s) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name())"

step "1/3 numerics (fixtures, CUDA vs CPU)"
timeout -k 5 100 $PY bench/numerics_cuda.py --device cuda --out "$OUT/numerics.json" >/dev/null
echo "numerics exit $?"

step "2/3 bench, tiny size on CUDA"
timeout -k 5 80 $PY bench/bench_real_size.py --size tiny --device cuda --frames 4 \
  --out "$OUT/bench_tiny_cuda.json" >/dev/null
echo "tiny bench exit $?"

step "3/3 bench, released size on CUDA"
timeout -k 10 300 $PY bench/bench_real_size.py --size released --device cuda --frames 32 \
  --out "$OUT/bench.json" --profile-dir "$OUT" --timeout-s 240 >/dev/null
echo "released bench exit $?"
rm -f "$OUT"/*.tmp
step "done"
$PY - "$OUT/bench.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
keys = ("status", "errors", "cut3r", "cold", "warm_ask", "warm_localize", "train", "projection",
        "targets", "rtx4090_24gb")
print(json.dumps({k: d.get(k) for k in keys}, indent=1))
PY
