#!/usr/bin/env bash
# The training engine on a GPU, in under 8 minutes; prints one table (docs/speed.md).
#
#   bash benchmarks/gpu_check.sh               # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps at tiny sizes on the CPU (plumbing only)
#
# 1. training it/s of SRResNet (64x16) and RRDB (64x23) at the paper's batch (16, LR patch 32,
#    x4) for each precision (fp32, fp32 with TF32, bf16, fp16) x channels_last x torch.compile,
#    on the model step (one pre-degraded batch); configurations starting after MATRIX_BUDGET_S
#    seconds are listed as skipped;
# 2. the share of a full iteration (the job's Real-ESRGAN degradation and data) spent outside
#    the model step (target: a full iteration <= 1.15x the model step);
# 3. a 2,000-iteration real job through `python -m sweeper` (train + evaluation), wall time;
# 0. first, the Real-ESRGAN degradation on the device (benchmarks/degradation_device.py): no
#    host sync (set_sync_debug_mode "error"), same seed twice, device vs CPU, noise vs OpenCV,
#    batches/s with resize_bucket 1 and 8;
# 4. last, jobs_per_gpu scaling: 1, 2 and 4 SRResNet jobs sharing the GPU (launcher=local_parallel
#    hydra.launcher.jobs_per_gpu=k), total training it/s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1

if [ $SMOKE = 1 ]; then
  DEVICE=cpu
  MATRIX=(--cpu-smoke --no-compile --iters 2 --warmup 1 --threads 1 --budget-s 120)
  JOB=(preset=smoke train.iterations=20 "train.scheduler.periods=[10,10]" train.val_every=20 train.ckpt_every=10
       train.log_every=10 eval.max_images=1 "eval.degradations=[clean,noise]" train.threads=1)
  JOB_TIMEOUT=300
  DEGRADE=(--batches 2 --gt-crop 128 --batch 4)
else
  DEVICE=cuda
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
  MATRIX=(--iters 30 --warmup 5 --budget-s "${MATRIX_BUDGET_S:-150}")
  DEGRADE=(--batches 20)
  JOB=(train.iterations=2000 "train.scheduler.periods=[2000]" "train.scheduler.restart_weights=[1]"
       train.val_every=1000 train.ckpt_every=1000 train.log_every=500 "train.precision=${JOB_PRECISION:-bf16}")
  JOB_TIMEOUT=${JOB_TIMEOUT_S:-180}
fi

echo "== 0. the degradation on the device" >&2
timeout 150 "$PY" benchmarks/degradation_device.py --device "$DEVICE" "${DEGRADE[@]}" --json "$OUT/degrade.json" \
  >"$OUT/degrade.md" || echo "| degradation check | failed (see stderr) |" >"$OUT/degrade.md"

echo "== 1-2. training it/s matrix and the share outside the model step" >&2
"$PY" benchmarks/bench_train.py --matrix --device "$DEVICE" "${MATRIX[@]}" --json "$OUT/matrix.json" >&2

echo "== 3. a real job through python -m sweeper" >&2
start=$(date +%s)
set +e
SR_OUTPUT_ROOT="$OUT/job" timeout "$JOB_TIMEOUT" "$PY" -m sweeper "${JOB[@]}" train.device="$DEVICE" \
  logger.mode=disabled sweep_name=gpu_check >"$OUT/job.log" 2>&1
rc=$?
set -e
echo "{\"rc\": $rc, \"wall_s\": $(( $(date +%s) - start ))}" >"$OUT/job.json"
tail -3 "$OUT/job.log" >&2

echo "== 4. jobs_per_gpu scaling" >&2
: >"$OUT/share.jsonl"
if [ $SMOKE = 0 ]; then
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

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = json.loads((out / "matrix.json").read_text())
job = json.loads((out / "job.json").read_text())
print((out / "degrade.md").read_text())
print("| check | backbone | precision | channels_last | compile | it/s | note |")
print("|---|---|---|---|---|---:|---|")
for r in rows:
    check = "full iteration" if r["note"].startswith("full iteration") else "model step"
    it_s = f"{r['it_s']:.2f}" if r["it_s"] else "-"
    print(f"| {check} | {r['backbone']} | {r['precision']} | {r['channels_last']} | {r['compile']} | {it_s} | {r['note']} |")
results = list((out / "job").glob("runs/*/results.json")) + list((out / "job").glob("sweeps/*/*/results.json"))
if results:
    res = json.loads(results[0].read_text())
    cfg = res["config"]["train"]
    note = (f"{job['wall_s']:.0f} s wall (train {res['train_seconds']:.0f} s, eval {res['eval_seconds']:.0f} s), "
            f"test/builtin/clean/psnr {res['metrics'].get('test/builtin/clean/psnr', float('nan')):.2f}")
    print(f"| real job | {res['config']['backbone']['name']} | {cfg['precision']} | {cfg['channels_last']} | "
          f"{cfg['compile']} | {cfg['iterations'] / res['train_seconds']:.2f} | {note} |")
else:
    print(f"| real job | - | - | - | - | - | no results (rc {job['rc']}, {job['wall_s']:.0f} s; see {out}/job.log) |")
shares = [json.loads(line) for line in (out / "share.jsonl").read_text().splitlines() if line.strip()]
for share in shares:
    k = share["k"]
    runs = [json.loads(p.read_text()) for p in (out / f"share{k}").glob("sweeps/*/*/results.json")]
    total = sum(r["config"]["train"]["iterations"] / r["train_seconds"] for r in runs)
    print(f"| jobs_per_gpu={k} | srresnet | fp32 | - | - | {total:.2f} | total of {len(runs)}/{k} jobs' it/s; "
          f"sweep wall {share['wall_s']} s |")
if not shares:
    print("| jobs_per_gpu | - | - | - | - | - | skipped on the CPU (needs GPUs) |")
EOF
