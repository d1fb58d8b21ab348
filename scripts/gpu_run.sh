#!/usr/bin/env bash
# A budgeted GPU job (~8 minutes in all, GPU_RUN_BUDGET seconds): pretrain `paper`, then `small`, for 10 epochs on the
# full CHILDES pretraining split, evaluate both (dialogue minimal pairs, BLiMP, Zorro), and leave in $OUT (default
# /tmp/gpu_run_out) what it measured. The whole paper (every stage, no time budget) is scripts/paper_pipeline.py instead.
#   gpu_log.txt        everything printed            stages.txt    each stage's exit code and seconds
#   summary.json       tokens/s, MFU, wall time, losses per run
#   lm-small.tar.gz    the small run (weights-only checkpoint ~15 MB, config, tokenizer, log.csv, loss.png, samples)
#   lm-paper.tar.gz    the paper run's logs (no checkpoint)
#   eval.tar.gz        evaluate.py's results (md/json/png/csv): eval_dialogue/ (the paper's dialogue minimal pairs,
#                      words and tokens) and eval_grammar/ (BLiMP, Zorro)
#
# Needs: gpu_carry/ (GPU_CARRY), made by `scripts/gpu_prepare.sh ../shared/data` on any machine with the data (the GPU
# machine needs neither network nor ../shared); a CUDA GPU; python (PYTHON, default python3) with requirements.txt.
#   bash scripts/gpu_run.sh
# Smoke test on CPU with the tiny preset, a few steps and the embedded samples (the same code paths):
#   GPU_CARRY=/tmp/smoke_carry GPU_PREPARE_DATA=/tmp/smoke_data GPU_PREPARE_CHILDES=data/childes \
#     scripts/gpu_prepare.sh ../shared/data
#   GPU_RUN_SMOKE=1 GPU_CARRY=/tmp/smoke_carry OUT=/tmp/gpu_out bash scripts/gpu_run.sh
#
# Every stage has its own time limit; a training stage that reaches it gets SIGINT (= Ctrl-C: the run saves its
# checkpoint at the end of the step and stops), and whatever finished is packed right away, so a late failure
# still brings back the earlier results.
set -x -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_run_out}
CARRY=${GPU_CARRY:-gpu_carry}
WORK=${GPU_RUN_WORK:-/tmp/gpu_run}
PY=${PYTHON:-python3}
BUDGET=${GPU_RUN_BUDGET:-480}  # seconds for the whole script
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "${GPU_RUN_SMOKE:-0}" = 1 ]; then
  SMALL=(--preset tiny --max-steps 6 --eval-every 3)
  PAPER=(--preset tiny --max-steps 4 --eval-every 2 --batch-size 4)
  TASKS=(dialogue_words zorro)
  declare -A LIMIT=([small]=120 [paper]=120 [eval_dialogue]=150 [eval_grammar]=150)
else
  SMALL=(--preset small --epochs 10 --batch-size 128 --eval-every 500)
  PAPER=(--preset paper --epochs 10 --eval-every 1000)
  TASKS=(dialogue_words,dialogue_tokens blimp,zorro)  # dialogue minimal pairs first: the paper's own measure
  # paper first and with most of the time: a small run from a GPU already exists (README), a paper one does not
  declare -A LIMIT=([paper]=240 [small]=120 [eval_dialogue]=50 [eval_grammar]=50)
fi

stage() {  # stage NAME COMMAND...: run under the stage's limit, never past the script's budget
  local name=$1; shift
  local left=$(( BUDGET - SECONDS - 20 ))
  local limit=$(( LIMIT[$name] < left ? LIMIT[$name] : left ))
  if [ "$limit" -lt 10 ]; then echo "$name skipped: budget spent" >> "$OUT/stages.txt"; return 1; fi
  local start=$SECONDS
  timeout -s INT -k 30 "$limit" "$@"
  local rc=$?
  echo "$name rc=$rc seconds=$(( SECONDS - start )) limit=$limit" >> "$OUT/stages.txt"
  return $rc
}

# --- the machine --------------------------------------------------------------------------------------------------
nvidia-smi || true
"$PY" - <<'EOF' | tee "$WORK/env.txt"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("numpy", "sentencepiece", "tqdm", "matplotlib", "transformers"):
    try:
        print(name, __import__(name).__version__)
    except ImportError as error:
        print("MISSING", name, error)
EOF
[ -f "$CARRY/data/train.bin" ] || { echo "no $CARRY/data/train.bin: run scripts/gpu_prepare.sh first"; exit 2; }

# --- pretraining ---------------------------------------------------------------------------------------------------
pack_run() {  # pack_run NAME WITH_WEIGHTS: logs (and a weights-only checkpoint) of $WORK/lm-NAME -> $OUT/lm-NAME.tar.gz
  local run=$WORK/lm-$1 packed=$WORK/packed/lm-$1
  [ -f "$run/log.csv" ] || return 1
  rm -rf "$packed"; mkdir -p "$packed"
  cp "$run"/{log.csv,config.json} "$packed"/ 2>/dev/null
  cp "$run"/{loss.png,samples.txt} "$packed"/ 2>/dev/null
  if [ "$2" = 1 ] && [ -f "$run/checkpoint.pt" ]; then  # a run directory load_model() reads, without optimizer state
    cp "$run"/{config.json,tokenizer.model} "$packed"/
    "$PY" -c "import sys, torch; torch.save({'model': torch.load(sys.argv[1], map_location='cpu', weights_only=False)['model']}, sys.argv[2])" \
      "$run/checkpoint.pt" "$packed/checkpoint.pt"
  fi
  tar czf "$OUT/lm-$1.tar.gz" -C "$WORK/packed" "lm-$1"
}

stage paper "$PY" train_lm.py "${PAPER[@]}" --data "$CARRY/data" --out "$WORK/lm-paper" --overwrite
pack_run paper 0
stage small "$PY" train_lm.py "${SMALL[@]}" --data "$CARRY/data" --out "$WORK/lm-small" --overwrite
pack_run small 1

# --- evaluation ----------------------------------------------------------------------------------------------------
if [ -f evaluate.py ]; then
  EVAL_DATA=()
  if [ -f "$CARRY/shared.tar.gz" ] && [ "${GPU_RUN_SMOKE:-0}" != 1 ]; then  # the smoke test scores the embedded samples
    mkdir -p "$WORK/shared" && tar xzf "$CARRY/shared.tar.gz" -C "$WORK/shared" && EVAL_DATA=(--eval-data "$WORK/shared")
  fi
  MODELS=()
  for run in "$WORK/lm-paper" "$WORK/lm-small"; do [ -f "$run/checkpoint.pt" ] && MODELS+=(--model "$run"); done
  if [ ${#MODELS[@]} -gt 0 ]; then
    for i in 0 1; do
      name=$([ $i = 0 ] && echo eval_dialogue || echo eval_grammar)
      stage $name "$PY" evaluate.py "${MODELS[@]}" "${EVAL_DATA[@]}" --tasks "${TASKS[$i]}" --bootstrap 200 \
        --out "$WORK/$name"
      (cd "$WORK" && tar czf "$OUT/eval.tar.gz" eval_*/results.md eval_*/results.json eval_*/results.png eval_*/log.csv)
    done
  fi
fi

# --- summary: tokens/s, MFU against the bf16 matmul peak measured here, wall time, losses ---------------------------
"$PY" - "$WORK" "$OUT/summary.json" <<'EOF'
import csv, json, math, sys
from pathlib import Path
import torch
from benchmarks.common import matmul_peak, training_flops_per_token
from llamalogue.model import ModelConfig

work, out = Path(sys.argv[1]), Path(sys.argv[2])
cuda = torch.cuda.is_available()
peak = matmul_peak("cuda", torch.bfloat16, n=8192) if cuda else matmul_peak("cpu")
summary = {"device": torch.cuda.get_device_name() if cuda else "cpu", "matmul_peak_tflops": round(peak / 1e12, 1),
           "peak_dtype": "bfloat16" if cuda else "float32", "runs": {}}
for run in sorted(work.glob("lm-*")):
    if not (run / "log.csv").exists():
        continue
    rows = list(csv.DictReader(open(run / "log.csv")))
    config = json.loads((run / "config.json").read_text())
    model = ModelConfig(**json.loads((run / "config.json").read_text())["model"]) if (run / "config.json").exists() else None
    speeds = sorted(float(r["tokens_per_s"]) for r in rows[1:] or rows)
    median = speeds[len(speeds) // 2]
    flops = training_flops_per_token(model) if model else float("nan")
    val = [(int(r["step"]), float(r["epoch"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    summary["runs"][run.name] = {
        "scale": config["scale"], "steps": int(rows[-1]["step"]), "total_steps": config["total_steps"],
        "epochs": float(rows[-1]["epoch"]), "tokens": int(rows[-1]["tokens"]), "wall_s": float(rows[-1]["elapsed_s"]),
        "tokens_per_s_median": round(median), "mfu_percent": round(100 * median * flops / peak, 2),
        "train_loss": float(rows[-1]["train_loss"]), "val_loss": val[-1][2] if val else None,
        "val_ppl": round(math.exp(val[-1][2]), 3) if val else None,
        "validation": [{"step": s, "epoch": e, "val_loss": v, "val_ppl": round(math.exp(v), 3)} for s, e, v in val],
    }
out.write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
cat "$OUT/stages.txt"
ls -la "$OUT"
