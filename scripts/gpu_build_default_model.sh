#!/usr/bin/env bash
# Build the embedded default model on one GPU machine (device tool: `bash
# scripts/gpu_build_default_model.sh`, timeout_s 600). The recipe: furnished rooms (textured, each
# kind of furniture told apart by its parts, not its proportions alone: on b38's held-out rooms
# most of the pointers' misses were desks taken for tables, cabinets for shelves, chairs for beds;
# docs/experiments.md, b41; LOOK=textured for the look b38 was trained on), room scans
# (scan videos of at least 24 steps that see most of the room, 16 evenly spaced frames of them per
# query: the situation's anchor is in view in 92 % of situations, 97 % at FRAMES=32, the paper's
# count and what the CPU runs could not afford; docs/experiments.md, b15 and b16), the geometric
# pose source stated in the camera tokens with each patch's 3D point (--point_embedding: at equal
# steps on 2 CPU cores it doubled the attention on the situation's anchor, docs/experiments.md;
# POINT_EMBEDDING=False for the poses alone), `<Pos>` also pointing at patches and reading their
# layout beside f_pos, as in the shipped bundle (--position_pointer; POSITION_POINTER=False: f_pos
# alone), the egocentric read-out (the answer handed where the object it attends to lies from the
# situation's pose: direction answers above their majority answer for the first time, b30;
# EGOCENTRIC_READOUT=False leaves it out) picking objects by their place (what side 1.7x its
# majority answer, b32; READOUT_OBJECTS=False) and told the anchor's patches by the position
# pointer's attention, so "the closest object to me" can leave out the object the agent is at
# (nearest +4.0 points on fresh rooms, b33; READOUT_ANCHOR=False), `<Ori>` reading its heading as the bearing to the
# faced object (HEADING_POINTER=False: f_ori alone) and both pointers grounded on their objects
# (GROUND_POINTERS=False), as in the shipped bundle, data rendered on all cores, the vision tower and the
# VLM trained on the GPU (bf16 autocast), a tiny CUT3R for the geometric source's depth and focal
# length: the shipped one at 64 px, or CUT3R_DIR at CUT3R_SIZE px (the output of
# scripts/gpu_train_cut3r.sh, an earlier GPU run; CUT3R_SIZE defaults to the size its config
# says it was trained at), or with CUT3R_STAGE=1 the shipped one tuned here first at CUT3R_SIZE
# (128; CUT3R_RENDER_S = 30 s of rooms, CUT3R_BUDGET_S = 60 s of steps, taken from the VLM's
# RENDER_WITHIN_S, 200 s otherwise), and the depth network that replaces CUT3R's depth in the
# pose source, trained here first (90 s, DEPTH_STAGE below) or DEPTH_DIR. The VLM sees 224 px
# frames (IMAGE_SIZE): an 8x8 grid of pooled patches per frame instead of 112 px's 4x4, since on 4x4 cells the
# grounding finds small anchors (chairs, plants, lamps) far less often than beds and windows
# (docs/experiments.md, "small objects in coarse cells"); the tower's pretraining stops after
# VISION_BUDGET_S (90 s) of steps whatever VISION_STEPS says, so the VLM keeps its time.
# Rooms before steps: the training rooms render for RENDER_WITHIN_S seconds (as many as the
# cores give, up to TRAIN_EPISODES), since a CPU run that saw 1500 rooms 3 times memorised them
# (docs/experiments.md, "grounding that memorises rooms"); the VLM trains on what is left.
# Each room gets TRAIN_SITUATIONS (8) situations (free: drawn after the walk) and a batch takes
# QUESTIONS_PER_SCENE (8) questions of each room it draws, one per situation, sharing one pass
# over the room's video (loc3r.vlm.packing; bench/bench_vlm_training.py on a 2-core CPU: 4.1x the
# samples per second of one row per question on one thread, 3.7x on two).
# Training stops at its time budget, so the script ends within ~9 minutes. What comes back
# ($OUT, at most 8 files of 16 MiB): the bundle as a tar in parts of 15 MiB (bundle.tar.part-aa,
# ...: `mkdir B && cat bundle.tar.part-* | tar -x -C B`), eval.json (timings per stage),
# metrics.jsonl, build.log.
# The same command runs on a CPU machine (slowly): every stage picks CUDA when there is one.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/loc3r_gpu_build}
RUN=${RUN:-/tmp/loc3r_gpu_run}
source scripts/gpu_session.sh  # WORKERS, PY, the log in $OUT/build.log
SHIPPED_CUT3R=loc3r_ros/loc3r/assets/default_model/cut3r
RENDER_DEFAULT_S=200
if [ "${CUT3R_STAGE:-0}" = 1 ]; then  # make_default_model's CUT3R stage, tuning the shipped one
  CUT3R_RENDER_S=${CUT3R_RENDER_S:-30}; CUT3R_BUDGET_S=${CUT3R_BUDGET_S:-60}
  CUT3R_ARGS="--cut3r_image_size=${CUT3R_SIZE:-128} --cut3r.init=$SHIPPED_CUT3R
    --cut3r.train_episodes=20000 --cut3r.render_within_s=$CUT3R_RENDER_S
    --cut3r.steps=20000 --cut3r.time_budget_s=$CUT3R_BUDGET_S --cut3r.batch_size=32
    --cut3r.lr=3e-4 --cut3r.warmup_steps=50 --cut3r.pose_weight=0.2
    --cut3r.train_seed_offset=40000 --cut3r.eval_seed_offset=9610000 --cut3r.eval_episodes=20"
  # the stage's time comes out of the VLM's rooms, so that the run still ends in time
  RENDER_DEFAULT_S=$(( RENDER_DEFAULT_S - CUT3R_RENDER_S - CUT3R_BUDGET_S > 30 ?
                       RENDER_DEFAULT_S - CUT3R_RENDER_S - CUT3R_BUDGET_S : 30 ))
else
  CUT3R_DIR=${CUT3R_DIR:-$SHIPPED_CUT3R}
  if [ -z "${CUT3R_SIZE:-}" ]; then  # the size it was trained at (its config's img_size)
    CUT3R_SIZE=$($PY -c "import json, sys; print(max(json.load(open(sys.argv[1]))['config']
      ['img_size']))" "$CUT3R_DIR/config.json") || end_session 2
  fi
  CUT3R_ARGS="--cut3r_dir=$CUT3R_DIR --cut3r_image_size=$CUT3R_SIZE"
fi
# the geometric pose source's depth network (loc3r.engine.mono_depth): DEPTH_DIR (a trained one),
# else trained here first (DEPTH_STAGE=1, the default: DEPTH_RENDER_S = 30 s of rooms and
# DEPTH_BUDGET_S = 60 s of steps, taken from the VLM's rooms); DEPTH_STAGE=0: CUT3R's depth
if [ -n "${DEPTH_DIR:-}" ]; then
  DEPTH_ARGS="--depth_dir=$DEPTH_DIR"
elif [ "${DEPTH_STAGE:-1}" = 1 ]; then
  DEPTH_RENDER_S=${DEPTH_RENDER_S:-30}; DEPTH_BUDGET_S=${DEPTH_BUDGET_S:-60}
  DEPTH_ARGS="--depth_stage=true --depth.train_episodes=20000
    --depth.render_within_s=$DEPTH_RENDER_S --depth.time_budget_s=$DEPTH_BUDGET_S
    --depth.steps=100000 --depth.batch_size=64 --depth.train_seed_offset=60000"
  RENDER_DEFAULT_S=$(( RENDER_DEFAULT_S - DEPTH_RENDER_S - DEPTH_BUDGET_S > 30 ?
                       RENDER_DEFAULT_S - DEPTH_RENDER_S - DEPTH_BUDGET_S : 30 ))
else
  DEPTH_ARGS=""
fi
echo "CUT3R: $CUT3R_ARGS"
echo "depth: ${DEPTH_ARGS:-from CUT3R}"
timeout -k 10 ${BUILD_TIMEOUT_S:-540} $PY -m loc3r.train.make_default_model \
  --out=$RUN --target=$RUN/bundle \
  --look=${LOOK:-furnished} --walk=${WALK:-room_scan} --frames=${FRAMES:-16} --render_size=224 \
  --image_size=${IMAGE_SIZE:-224} \
  --camera_prior=geometric --point_embedding=${POINT_EMBEDDING:-True} \
  --position_pointer=${POSITION_POINTER:-True} --egocentric_readout=${EGOCENTRIC_READOUT:-True} \
  --readout_objects=${READOUT_OBJECTS:-True} --readout_anchor=${READOUT_ANCHOR:-True} \
  --heading_pointer=${HEADING_POINTER:-True} \
  --ground_pointers=${GROUND_POINTERS:-True} \
  --eval_episodes=${EVAL_EPISODES:-30} \
  $CUT3R_ARGS $DEPTH_ARGS \
  --tokenizer_dir=loc3r_ros/loc3r/assets/default_model/vlm \
  --workers=$WORKERS --train_episodes=${TRAIN_EPISODES:-20000} --steps=${STEPS:-5000} \
  --render_within_s=${RENDER_WITHIN_S:-$RENDER_DEFAULT_S} \
  --train_situations=${TRAIN_SITUATIONS:-8} --questions_per_scene=${QUESTIONS_PER_SCENE:-8} \
  --batch_size=${BATCH_SIZE:-64} --micro_batch=${MICRO_BATCH:-64} \
  --time_budget_s=${TRAIN_BUDGET_S:-240} --finish_within_s=${FINISH_WITHIN_S:-520} \
  --vision.episodes=${VISION_EPISODES:-1000} --vision.steps=${VISION_STEPS:-6000} \
  --vision.time_budget_s=${VISION_BUDGET_S:-90} "$@"
status=$?
echo; echo "make_default_model exit $status"
if [ -f $RUN/bundle/bundle.json ]; then
  tar -C $RUN/bundle -cf - . | split -b 15M - "$OUT/bundle.tar.part-"
fi
cp $RUN/bundle/eval.json $RUN/metrics.jsonl "$OUT"/ 2>/dev/null
ls -la "$OUT"; date -u
end_session $status
