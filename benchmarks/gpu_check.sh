#!/usr/bin/env bash
# The training engine on a GPU, in about 8 minutes on an H200; prints Markdown tables (docs/speed.md).
#
#   bash benchmarks/gpu_check.sh               # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps at tiny sizes on the CPU (plumbing only)
#
# Where only PyTorch is installed, the other packages travel as wheels (../shared/gpu/README.md):
#   python3 -m pip install -q --no-index --no-deps --target "$HOME/site" .whl/*.whl
#   export PYTHONPATH="$HOME/site:$PWD"
# The ceiling (step 1) runs ../shared/gpu/graph_ceiling.py when it is found at $CEILING
# (default .gpu/graph_ceiling.py: copy it into a git-ignored folder of the checkout).
#
# 0. the Real-ESRGAN degradation on the device (benchmarks/degradation_device.py): no host sync,
#    same seed twice, device vs CPU, noise vs OpenCV, batches/s; amortized ms per batch when K
#    batches are degraded in one call (train.superbatch, K = 1, 4, 8, 16; group_px default, 0, inf);
# 1. the ceiling: the project's SRResNet/RRDB step eager vs one CUDA graph (graph_ceiling.py);
# 2. the engine: model-step it/s of SRResNet (64x16) and RRDB (64x23) at the paper's batch (16, LR
#    32, x4), eager vs CUDA graph, fp32 / bf16 / bf16+channels_last, peak GPU memory; then a full
#    iteration (the job's degradation and data) vs the model step, the loop as before (eager, one
#    degradation call per batch) and as now (graph, superbatch 8, prefetch 2): target <= 1.15x;
# 3. equivalence: 50 steps eager vs graph on the same batches (loss within bf16's tolerance), two
#    graphed runs with one seed, the official architectures' outputs eager and after capture, and a
#    profile of where an eager iteration's time goes (benchmarks/gpu_engine.py);
# 4. real jobs through `python -m sweeper` (train + evaluation), bf16: SRResNet 2,000 iterations
#    with the defaults (CUDA graph) and the eager loop as before; RRDB the same at RRDB_ITERS (500);
# 5. with SHARE=1, jobs_per_gpu scaling: 1, 2 and 4 SRResNet jobs sharing the GPU (total it/s);
# 6. fused groups (FUSE=0 skips): 8 SRResNet seeds at the paper's batch, bf16, FUSE_ITERS (300) each, as one fused
#    group, one by one (fuse=off) and 4 per GPU (local_parallel jobs_per_gpu=4): total images/s.
# 7. one job on 2 GPUs (train.gpus=2, DistributedDataParallel) vs the same job on 1, the same global
#    batch (bicubic, no dropout: the same crops), RANKS_ITERS (1000) each: it/s, images/s, final loss
#    and their relative gap; "skipped: 1 GPU" on a machine with fewer than 2 (--cpu-smoke: 2 gloo CPU ranks).
# FULL=1 adds tf32, fp16 and torch.compile to step 2's matrix (several more minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
CEILING=${CEILING:-.gpu/graph_ceiling.py}

if [ $SMOKE = 1 ]; then
  DEVICE=cpu
  MATRIX=(--cpu-smoke --no-compile --precisions fp32,bf16 --iters 2 --warmup 1 --threads 1 --budget-s 120)
  ENGINE=(--cpu-smoke)
  SMALL=(preset=smoke train.threads=1 eval.max_images=1 "eval.degradations=[clean,noise]")
  SR_JOBS=("srresnet 20 20") RRDB_JOBS=("rrdb 10 10")
  JOB_TIMEOUT=300
  DEGRADE=(--batches 2 --gt-crop 128 --batch 4)
else
  DEVICE=cuda
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
  if [ "${FULL:-0}" = 1 ]; then
    MATRIX=(--iters 30 --warmup 5 --budget-s 600)
  else
    MATRIX=(--iters 30 --warmup 5 --no-compile --precisions fp32,bf16 --budget-s "${MATRIX_BUDGET_S:-150}")
  fi
  ENGINE=()
  SMALL=()
  SR_JOBS=("srresnet ${SR_ITERS:-2000} ${SR_EAGER_ITERS:-1000}") RRDB_JOBS=("rrdb ${RRDB_ITERS:-500} ${RRDB_EAGER_ITERS:-300}")
  JOB_TIMEOUT=${JOB_TIMEOUT_S:-150}
  DEGRADE=(--batches 20)
fi
if [ $SMOKE = 1 ]; then DEGRADE+=(--many 1,2 --many-rounds 1); else DEGRADE+=(--many 1,4,8,16 --group-px default,0,inf); fi

echo "== 0. the degradation on the device" >&2
timeout 180 "$PY" benchmarks/degradation_device.py --device "$DEVICE" "${DEGRADE[@]}" --json "$OUT/degrade.json" \
  >"$OUT/degrade.md" || echo "| degradation check | failed (see stderr) |" >"$OUT/degrade.md"

echo "== 1. the ceiling (graph_ceiling.py)" >&2
: >"$OUT/ceiling.jsonl"
if [ $SMOKE = 0 ] && [ -f "$CEILING" ]; then
  timeout 240 "$PY" "$CEILING" . >"$OUT/ceiling.jsonl" 2>"$OUT/ceiling.err" || true
fi

echo "== 2. the engine: model step, graph vs eager, and the full iteration" >&2
"$PY" benchmarks/bench_train.py --matrix --device "$DEVICE" "${MATRIX[@]}" --json "$OUT/matrix.json" >&2

echo "== 2b. SwinIR and HAT: bf16 vs fp32, eager vs graph (model step)" >&2
if [ $SMOKE = 0 ]; then
  "$PY" benchmarks/bench_train.py --matrix --device "$DEVICE" --backbones swinir,hat --precisions fp32,bf16 --no-compile \
    --iters 10 --warmup 3 --budget-s "${TRANSFORMER_BUDGET_S:-90}" --outside-precisions "" --json "$OUT/matrix_tf.json" >&2 \
    || echo "[]" >"$OUT/matrix_tf.json"
fi

echo "== 3. equivalence, official outputs after capture, profile" >&2
timeout 300 "$PY" benchmarks/gpu_engine.py --device "$DEVICE" "${ENGINE[@]}" --json "$OUT/engine.json" >&2 \
  || echo '[{"check": "gpu_engine", "error": "failed or timed out (see stderr)"}]' >"$OUT/engine.json"

echo "== 4. real jobs through python -m sweeper" >&2
: >"$OUT/jobs.jsonl"
for spec in "${SR_JOBS[@]}" "${RRDB_JOBS[@]}"; do
  read -r backbone iters eager_iters <<<"$spec"
  for engine in graph eager; do
    n=$iters
    extra=()
    if [ $engine = eager ]; then
      n=$eager_iters
      extra=(train.cuda_graph=false train.superbatch=1 train.prefetch=0)
    fi
    name="$backbone-$engine"
    start=$(date +%s)
    set +e
    SR_OUTPUT_ROOT="$OUT/jobs/$name" timeout "$JOB_TIMEOUT" "$PY" -m sweeper backbone="$backbone" "${SMALL[@]}" \
      train.iterations="$n" "train.scheduler.periods=[$n]" "train.scheduler.restart_weights=[1]" \
      train.val_every="$n" train.ckpt_every="$n" train.log_every=$(( n / 4 > 0 ? n / 4 : 1 )) \
      train.precision="${JOB_PRECISION:-bf16}" train.device="$DEVICE" "${extra[@]}" \
      logger.mode=disabled sweep_name=gpu_check >"$OUT/$name.log" 2>&1
    rc=$?
    set -e
    echo "{\"job\": \"$name\", \"rc\": $rc, \"wall_s\": $(( $(date +%s) - start ))}" >>"$OUT/jobs.jsonl"
    tail -2 "$OUT/$name.log" >&2
  done
done

echo "== 5. jobs_per_gpu scaling" >&2
: >"$OUT/share.jsonl"
if [ $SMOKE = 0 ] && [ "${SHARE:-0}" = 1 ]; then
  for k in 1 2 4; do
    seeds=$(seq -s, 0 $((k - 1)))
    start=$(date +%s)
    SR_OUTPUT_ROOT="$OUT/share$k" timeout 120 "$PY" -m sweeper -m launcher=local_parallel hydra.launcher.jobs_per_gpu=$k \
      seed="$seeds" train.iterations=${SHARE_ITERS:-400} "train.scheduler.periods=[${SHARE_ITERS:-400}]" \
      "train.scheduler.restart_weights=[1]" train.val_every=100000 train.ckpt_every=100000 eval.max_images=1 \
      "eval.degradations=[clean]" logger.mode=disabled sweep_name=share$k >"$OUT/share$k.log" 2>&1 || true
    echo "{\"k\": $k, \"wall_s\": $(( $(date +%s) - start ))}" >>"$OUT/share.jsonl"
  done
fi

echo "== 6. fused groups: 8 SRResNet seeds, fused vs one by one vs jobs_per_gpu=4" >&2
: >"$OUT/fused.jsonl"
if [ "${FUSE:-1}" = 1 ]; then
  if [ $SMOKE = 1 ]; then FJOB=("${SMALL[@]}" train.iterations=8 "train.scheduler.periods=[8]"); SEEDS=0,1; else
    FJOB=(train.iterations=${FUSE_ITERS:-300} "train.scheduler.periods=[${FUSE_ITERS:-300}]" train.precision=bf16 \
          eval.max_images=1 "eval.degradations=[clean]"); SEEDS=0,1,2,3,4,5,6,7; fi
  for mode in fused separate shared; do
    case $mode in
      fused) extra=() ;;
      separate) extra=(hydra.launcher.fuse=off) ;;
      shared) extra=(launcher=local_parallel hydra.launcher.fuse=off hydra.launcher.jobs_per_gpu=4) ;;
    esac
    [ $SMOKE = 1 ] && [ $mode = shared ] && continue
    start=$(date +%s)
    SR_OUTPUT_ROOT="$OUT/fused_$mode" timeout 240 "$PY" -m sweeper -m seed="$SEEDS" "${FJOB[@]}" \
      "train.scheduler.restart_weights=[1]" train.val_every=100000 train.ckpt_every=100000 train.device="$DEVICE" \
      logger.mode=disabled sweep_name=fused_$mode "${extra[@]}" >"$OUT/fused_$mode.log" 2>&1 || true
    echo "{\"mode\": \"$mode\", \"wall_s\": $(( $(date +%s) - start ))}" >>"$OUT/fused.jsonl"
  done
fi

echo "== 7. one job on 2 GPUs (train.gpus=2) vs 1, the same global batch" >&2
: >"$OUT/ranks.jsonl"
if [ $SMOKE = 1 ]; then NGPU=cpu; else NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())"); fi
if [ "$NGPU" = cpu ] || [ "$NGPU" -ge 2 ]; then
  if [ $SMOKE = 1 ]; then RITERS=20; RJOB=("${SMALL[@]}"); else
    RITERS=${RANKS_ITERS:-1000}; RJOB=(train.precision=fp32 eval.max_images=1 "eval.degradations=[clean]"); fi
  for n in 1 2; do
    start=$(date +%s)
    set +e
    SR_OUTPUT_ROOT="$OUT/ranks$n" timeout "$JOB_TIMEOUT" "$PY" -m sweeper "${RJOB[@]}" degradation=bicubic degradation.gt_size=null \
      dropout.position=none train.gpus=$n train.device="$DEVICE" train.iterations=$RITERS "train.scheduler.periods=[$RITERS]" \
      "train.scheduler.restart_weights=[1]" train.val_every=$RITERS train.ckpt_every=$RITERS \
      train.log_every=$(( RITERS / 4 > 0 ? RITERS / 4 : 1 )) logger.mode=disabled sweep_name=ranks$n >"$OUT/ranks$n.log" 2>&1
    rc=$?
    set -e
    echo "{\"gpus\": $n, \"rc\": $rc, \"wall_s\": $(( $(date +%s) - start ))}" >>"$OUT/ranks.jsonl"
    tail -2 "$OUT/ranks$n.log" >&2
  done
fi

"$PY" benchmarks/gpu_report.py "$OUT"

echo
if [ "$NGPU" = cpu ] || [ "$NGPU" -ge 2 ]; then
  "$PY" - "$OUT" "$NGPU" <<'PYEOF'
import json, re, sys
from pathlib import Path

out, ngpu = Path(sys.argv[1]), sys.argv[2]
unit = "CPU ranks (gloo)" if ngpu == "cpu" else "GPUs"
print(f"| one job on N {unit}, the same global batch | rc | it/s (training) | images/s | final loss | wall s |")
print("|---|---|---|---|---|---|")
losses = {}
for row in map(json.loads, (out / "ranks.jsonl").read_text().splitlines()):
    n = row["gpus"]
    log = (out / f"ranks{n}.log").read_text()
    found = re.findall(r"iter (\d+)/(\d+)\s+loss ([0-9.eE+-]+)", log)
    res = next((out / f"ranks{n}").glob("runs/*/results.json"), None)
    if row["rc"] != 0 or res is None or not found:
        print(f"| train.gpus={n} | {row['rc']} | **failed** (see ranks{n}.log) | - | - | {row['wall_s']} |")
        continue
    r = json.loads(res.read_text())
    iters, batch = r["config"]["train"]["iterations"], r["config"]["train"]["batch_size"]
    losses[n] = float(found[-1][2])
    it_s = iters / r["train_seconds"]
    print(f"| train.gpus={n} | 0 | {it_s:.1f} | {it_s * batch:.0f} | {losses[n]:.5f} | {row['wall_s']} |")
if len(losses) == 2:
    print(f"\nfinal loss, 2 ranks vs 1: relative gap {abs(losses[2] - losses[1]) / abs(losses[1]):.2e} (of the logged 4 decimals)")
PYEOF
else
  [ "$NGPU" = 1 ] && what="1 GPU" || what="$NGPU GPUs"
  echo "| one job on 2 GPUs (train.gpus=2) | skipped: $what |"
fi
