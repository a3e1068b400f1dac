#!/usr/bin/env bash
# The ablation of issue 18 (docs/ablations.md#the-ablation-of-the-open-readings): every arm forked from AaSM
# alone at the BCR switch-on, three seeds each, then one comparison table against AaSM alone.
#
#   bash docs/ablation_open_readings.sh                      # the embedded corpus (hours on a CPU)
#   CORPUS=vox1 bash docs/ablation_open_readings.sh          # config/ablation/vox1_* (GPU days)
#   CORPUS=synthetic_off_archetype bash docs/ablation_open_readings.sh   # AaSM alone and the full method only
#
# Environment: SEEDS ("0 1 2"), OUTPUT_DIR (experiments), EXTRA_OPTS (--opts for every run, default
# training.diagnostics=true), DRY_RUN=1 prints the commands instead of running them (the matched weight then
# stays the config's placeholder).
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=${CORPUS:-synthetic}
SEEDS=${SEEDS:-0 1 2}
OUTPUT_DIR=${OUTPUT_DIR:-experiments}
EXTRA_OPTS=${EXTRA_OPTS:-training.diagnostics=true}
PYTHON=${PYTHON:-python}
ABLATION=config/ablation
case "$CORPUS" in
  synthetic) BASE=config/synthetic.yaml; ARMS="aasm_bcr bcr_nonzero aasm_bcr_ie release ie_mean ie_broadcast" ;;
  vox1) BASE=config/cfg.yaml; ARMS="aasm_bcr bcr_nonzero aasm_bcr_ie release ie_mean ie_broadcast" ;;
  synthetic_off_archetype) BASE=$ABLATION/synthetic_off_archetype_aasm.yaml; ARMS="aasm_bcr_ie" ;;
  *) echo "CORPUS must be synthetic, vox1 or synthetic_off_archetype, got '$CORPUS'" >&2; exit 2 ;;
esac
# The matched-weight arm comes last: its λ is the full method's logged effective weight.
[ "$CORPUS" = synthetic_off_archetype ] || MATCHED=bcr_matched_weight

# A value of a config (a Python expression of its training section `t` and the config `c`).
config_value() {
  $PYTHON -c "import sys; from config import load_config; c = load_config(sys.argv[1], sys.argv[3:]); \
t = c.training; v = eval(sys.argv[2]); print(str(v).lower() if isinstance(v, bool) else v)" "$@"
}

run() {
  echo "+ $*"
  [ -n "${DRY_RUN:-}" ] || "$@"
}

# The fork: the last iteration before BCR switches on, and the schedule's end (EXTRA_OPTS included).
FORK=$(config_value "$ABLATION/${CORPUS}_aasm.yaml" "t.bcr_start_iter - 1" $EXTRA_OPTS)
MAX_ITER=$(config_value "$ABLATION/${CORPUS}_aasm.yaml" "t.max_iter" $EXTRA_OPTS)

# 1. AaSM alone up to the fork: every arm trains identically until then.
run $PYTHON train.py --cfg "$ABLATION/${CORPUS}_aasm.yaml" --seeds $SEEDS \
  --opts output_dir="$OUTPUT_DIR" $EXTRA_OPTS training.max_iter="$FORK"

# 2. Each arm starts from a copy of that checkpoint and of the best one as of then, and resumes it; a key
#    that resuming checks (training.ie_enabled, training.max_iter) is set explicitly.
fork() {
  local arm=$1; shift
  local cfg="$ABLATION/${CORPUS}_${arm}.yaml"
  local exp
  exp=$(config_value "$cfg" c.exp_name)
  local seed
  for seed in $SEEDS; do
    run mkdir -p "$OUTPUT_DIR/$exp/seed$seed"
    run cp "$OUTPUT_DIR/${CORPUS}_aasm/seed$seed/checkpoint_$FORK.pth.tar" \
      "$OUTPUT_DIR/${CORPUS}_aasm/seed$seed/checkpoint_best.pth.tar" "$OUTPUT_DIR/$exp/seed$seed/"
  done
  local ie
  ie=$(config_value "$cfg" t.ie_enabled)
  run $PYTHON train.py --cfg "$cfg" --seeds $SEEDS --resume auto \
    --opts output_dir="$OUTPUT_DIR" $EXTRA_OPTS training.max_iter="$MAX_ITER" training.ie_enabled="$ie" "$@"
}
for arm in $ARMS; do
  fork "$arm"
done

# 3. λ matched to the full method's effective BCR weight λ·mean(w): the mean of what its train.logs report at
#    the IE refreshes after the fork.
if [ -n "${MATCHED:-}" ]; then
  WEIGHT=$(config_value "$ABLATION/${CORPUS}_bcr_matched_weight.yaml" t.bcr_weight)
  if [ -z "${DRY_RUN:-}" ]; then
    WEIGHT=$(sed -n 's/.*effective BCR weight λ·mean(w) \([0-9.e+-]*\).*/\1/p' \
      "$OUTPUT_DIR/${CORPUS}_aasm_bcr_ie"/seed*/train.log | awk '{s += $1; n++} END {if (n) printf "%.4g", s / n}')
  fi
  echo "matched BCR weight: ${WEIGHT:?no effective BCR weight in the train.log of the full method}"
  fork "$MATCHED" training.bcr_weight="$WEIGHT"
fi

# 4. AaSM alone to the end, then the table: every arm against AaSM alone, seeds paired.
run $PYTHON train.py --cfg "$ABLATION/${CORPUS}_aasm.yaml" --seeds $SEEDS --resume auto \
  --opts output_dir="$OUTPUT_DIR" $EXTRA_OPTS training.max_iter="$MAX_ITER"
RUNS=("$OUTPUT_DIR/${CORPUS}_aasm")
for arm in $ARMS ${MATCHED:-}; do
  RUNS+=("$OUTPUT_DIR/$(config_value "$ABLATION/${CORPUS}_${arm}.yaml" c.exp_name)")
done
run $PYTHON test.py --cfg "$ABLATION/${CORPUS}_aasm.yaml" --opts $EXTRA_OPTS \
  --compare "${RUNS[@]}" --output "$OUTPUT_DIR/${CORPUS}_open_readings.json"
