# Set-up shared by the GPU session scripts (sourced from the repository root, with OUT and RUN
# set): $OUT made, WORKERS (all cores but one; taken before OMP_NUM_THREADS=1, which GNU nproc
# honours: the first H200 run built its data on one core), the environment, an earlier run's
# $RUN removed (a warm machine keeps /tmp: never return its files), everything printed from
# here on kept in $OUT/build.log (its last 4 MB), and the machine described there.
# `end_session STATUS` closes the log, waits until it is written, and exits with STATUS.
mkdir -p "$OUT"
WORKERS=${WORKERS:-$(( $(nproc --all) > 1 ? $(nproc --all) - 1 : 1 ))}
export PYTHONPATH=loc3r_ros PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
rm -rf "$RUN"
exec > >(tail -c 4000000 > "$OUT/build.log") 2>&1
LOG_PID=$!
date -u; nvidia-smi --query-gpu=name,memory.total --format=csv || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "workers: $WORKERS"

end_session() {
  exec >&- 2>&-
  wait "$LOG_PID"
  exit "$1"
}
