#!/usr/bin/env bash
# The GPU checks of issue 16, as one script of a few minutes for a lent GPU machine.
#
#   bash benchmarks/gpu_check.sh --out "$OUT/gpu_check.txt"     # on the device machine
#   bash benchmarks/gpu_check.sh --dry-run                       # here: same steps, CPU, toy sizes
#   bash benchmarks/gpu_check.sh --only pseudo,schp ...          # a subset of the steps below
#
# Steps (each timed; a failing step is recorded as FAIL with its exit status and the script goes
# on, so one run gives every figure it can):
#   env          GPU, driver, torch/CUDA versions, faiss GPU support
#   data         the synthetic dataset and its ground-truth masks (seconds), for the train steps
#   train-fp32   `maskcl train` on CUDA, 1 epoch of $ITERS iterations, train.amp=false
#   train-amp    the same with train.amp=true (bf16 autocast)
#   pseudo       pseudo-labels of N = 28k 2048-d features on the GPU: kNN by torch and by faiss-gpu
#                (goal <= 5 s in all); the Jaccard/DBSCAN/refinement steps run on the CPU
#   train-step   benchmarks/train_step.py: faithful fp32 vs optimised, resnet50 256x128 batch 64
#                (goal >= 2x)
#   schp         benchmarks/masks.py: SCHP parsing at 473x473, images/s at batch 1, 8, 16
#   torchrun     `torchrun --nproc_per_node=1 -m maskcl train` (NCCL on CUDA; the log line
#                "joined (nccl, cuda:0)" is the check)
# The figures go to --out (default /tmp/maskcl-gpu-check/results.txt); every step's full output
# goes to the .log file beside it. The device machine has python3 with torch but no faiss: bring
# faiss-gpu as wheels (see /work/.library/device/README.md) into .whl/ and carry it, or the faiss
# half of "pseudo" reports "skipped".
set -u -o pipefail

DRY=0
RESULTS=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) RESULTS="$2"; shift ;;
        --only) ONLY=",$2,"; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (expected --dry-run, --out FILE, --only STEPS)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
WORK=${WORK:-/tmp/maskcl-gpu-check}
RESULTS=${RESULTS:-$WORK/results.txt}
LOG="${RESULTS%.txt}.log"
mkdir -p "$WORK" "$(dirname "$RESULTS")"
: > "$RESULTS"
: > "$LOG"
# the project's venv where there is one (here), else the machine's python3 (the device image)
if [ -x "$ROOT/.venv/bin/python" ]; then PY=${PY:-$ROOT/.venv/bin/python}; else PY=${PY:-python3}; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then  # carried wheels (faiss-gpu)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$ROOT"/.whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ "$DRY" = 1 ]; then  # the same steps at toy sizes on the CPU: checks the script, no figures
    DEV=cpu; ITERS=2; PSEUDO_N=3000; STEP_ARGS="--arch resnet18 --height 64 --width 32 --batch 16 --steps 3 --warmup 1"
    SCHP_ARGS="--import-images 20 --schp-images 1 --batch-sizes 1"; NPROC_BACKEND=gloo
else
    DEV=cuda; ITERS=${ITERS:-30}; PSEUDO_N=28000
    STEP_ARGS="--arch resnet50 --height 256 --width 128 --batch 64 --steps 12 --warmup 3"
    SCHP_ARGS="--import-images 100 --schp-images 32 --batch-sizes 1,8,16"; NPROC_BACKEND=nccl
fi
DATA="--set dataset.root=$WORK/synthetic/LTCC_ReID --set dataset.mask_root=$WORK/masks --set masks.parsing_dir=$WORK/synthetic/parsing"
TRAIN="$DATA --set train.device=$DEV --set train.epochs=1 --set train.iters=$ITERS"

say() { echo "$*" | tee -a "$RESULTS"; }

# step NAME CMD...: run CMD, its output to the log; one status line (and the step's figures,
# the output lines matching $PICK) to the results
step() {
    local name=$1; shift
    local t0 t1 rc
    if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then PICK=""; return 0; fi
    echo "===== $name: $*" >> "$LOG"
    t0=$(date +%s.%N)
    "$@" > "$WORK/$name.out" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    cat "$WORK/$name.out" >> "$LOG"
    if [ $rc = 0 ]; then say "$name: ok, $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"; else say "$name: FAIL (exit $rc), $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s; see $LOG"; fi
    if [ -n "${PICK:-}" ]; then grep -E "$PICK" "$WORK/$name.out" | sed 's/^/    /' | tee -a "$RESULTS"; fi
    PICK=""
    return 0
}

say "# maskcl GPU check $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), dry-run=$DRY, device=$DEV"
say "# host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

PICK="." step env "$PY" - <<'EOF'
import subprocess, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip())
from maskcl.cluster.knn import faiss_available, faiss_gpu_available
print(f"faiss installed {faiss_available()}, faiss GPU {faiss_gpu_available()}")
EOF

step data bash -c "'$PY' -m maskcl synth --out '$WORK/synthetic' --force --no-progress && '$PY' -m maskcl masks --no-progress $DATA"

rm -rf "$WORK/train-fp32" "$WORK/train-amp" "$WORK/ddp"
PICK="epoch [0-9]+/[0-9]+:|pseudo-labels:|Error" step train-fp32 "$PY" -m maskcl train --out "$WORK/train-fp32" $TRAIN --set train.amp=false
PICK="epoch [0-9]+/[0-9]+:|pseudo-labels:|Error" step train-amp "$PY" -m maskcl train --out "$WORK/train-amp" $TRAIN --set train.amp=true

PICK="pseudo-labels|skipped" step pseudo "$PY" - "$DEV" "$PSEUDO_N" <<'EOF'
import sys, time
import torch
sys.path.insert(0, "benchmarks")
from cluster import make_features  # noqa: E402
from maskcl.cluster.knn import faiss_gpu_available  # noqa: E402
from maskcl.cluster.pseudo_labels import generate_pseudo_labels  # noqa: E402

dev, n = torch.device(sys.argv[1]), int(sys.argv[2])
x, _ = make_features(n, 2048, 20, 1.3, 0)
feats = torch.from_numpy(x).to(dev)
backends = ["torch"] + (["faiss"] if dev.type == "cpu" or faiss_gpu_available() else [])
if "faiss" not in backends:
    print(f"pseudo-labels N={n} backend=faiss: skipped (no faiss with GPU support here)")
for backend in backends:
    generate_pseudo_labels(feats[:2000], k1=30, k2=6, backend=backend)  # warm-up (CUDA context, kernels)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = generate_pseudo_labels(feats, k1=30, k2=6, backend=backend)
    wall = time.perf_counter() - t0
    t = res.timings
    print(f"pseudo-labels N={n} backend={backend} on {dev}: {wall:.2f} s (knn {t['knn_s']:.2f}, jaccard "
          f"{t['jaccard_s']:.2f}, dbscan {t['dbscan_s']:.2f}, refine {t['refine_s']:.2f}); {res.n_clusters} clusters"
          f"{'; goal <= 5 s' if dev.type == 'cuda' else ''}")
EOF

PICK="img/s|device" step train-step "$PY" benchmarks/train_step.py --device "$DEV" $STEP_ARGS
PICK="img/s|SCHP|machine" step schp "$PY" benchmarks/masks.py --device "$DEV" $SCHP_ARGS

PICK="joined|epoch [0-9]+/[0-9]+:|Error" step torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m maskcl train --out "$WORK/ddp" $TRAIN --set train.amp=false
if [ -n "$ONLY" ] && [[ "$ONLY" != *",torchrun,"* ]]; then :
elif grep -q "joined ($NPROC_BACKEND" "$WORK/torchrun.out"; then say "torchrun: backend $NPROC_BACKEND confirmed"; else say "torchrun: backend $NPROC_BACKEND NOT seen in the log"; fi

say "# done $(date -u '+%H:%M:%S UTC'); full output: $LOG"
