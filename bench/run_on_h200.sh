#!/usr/bin/env bash
# The one script a GPU session runs (device tool: command `bash bench/run_on_h200.sh`,
# timeout_s 570). Every step has its own `timeout` (510 s in all), so the script ends within 9 min;
# each step writes its JSON as it measures, so a step cut short still returns its figures.
#   1. the bench at tiny size on CUDA (a quick check of the CUDA path, CUDA graphs included)
#                                                                      -> $OUT/bench_tiny_cuda.json
#   2. the released size, bf16 + SDPA, 32 frames, what changed since the first H200 run: CUT3R
#      eager (RoPE tables cached since), the warm ask and localize, then static-cache decoding
#      with the one-token step and the text passes as CUDA graphs (warm ask, warm localize,
#      cold query), and the CUT3R frame as a CUDA graph
#                                                                      -> $OUT/bench_graphs.json
#   3. the released bench's other phases (cold query, training step, profiler tables)
#                                                                      -> $OUT/bench.json
#      with torch.profiler tables of a CUT3R step, warm ask, warm localize, cold query
#                                                                      -> $OUT/profile.txt
#   4. numerics (measured on the first H200 run, in 29 s; again if time is left): the fixtures'
#      CUT3R and LLaVA-Video, float32 CUDA vs CPU (<= 1e-4, same greedy tokens), bf16 errors
#                                                                      -> $OUT/numerics.json
# Everything else it prints goes to $OUT/session.log (at most 7 files come back).
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

step "1/4 bench, tiny size on CUDA"
timeout -k 5 80 $PY bench/bench_real_size.py --size tiny --device cuda --frames 4 \
  --out "$OUT/bench_tiny_cuda.json" >/dev/null
echo "tiny bench exit $?"

step "2/4 released size: CUT3R, warm queries, CUDA-graph decoding and CUT3R"
timeout -k 10 260 $PY bench/bench_real_size.py --size released --device cuda --frames 32 \
  --phases cut3r,warm_ask,warm_localize,graphs,cut3r_graphs --out "$OUT/bench_graphs.json" \
  --timeout-s 230 >/dev/null
echo "released graphs bench exit $?"

step "3/4 released size: cold query, training step, profile"
timeout -k 10 120 $PY bench/bench_real_size.py --size released --device cuda --frames 32 \
  --phases cut3r,cold,train,profile --out "$OUT/bench.json" --profile-dir "$OUT" \
  --timeout-s 100 >/dev/null
echo "released bench exit $?"

step "4/4 numerics (fixtures, CUDA vs CPU)"
timeout -k 5 50 $PY bench/numerics_cuda.py --device cuda --out "$OUT/numerics.json" >/dev/null
echo "numerics exit $?"
rm -f "$OUT"/*.tmp
step "done"
$PY - "$OUT/bench_graphs.json" "$OUT/bench.json" <<'PY' || true
import json, sys
keys = ("status", "errors", "cut3r", "cold", "warm_ask", "warm_localize", "static", "graphs",
        "cut3r_graphs", "train", "projection", "targets", "rtx4090_24gb")
for path in sys.argv[1:]:
    try:
        d = json.load(open(path))
    except (OSError, ValueError) as exc:
        print(path, exc)
        continue
    print(path, json.dumps({k: d[k] for k in keys if k in d}, indent=1))
PY
