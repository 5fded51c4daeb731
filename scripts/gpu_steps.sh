# Shared set-up of the GPU scripts (sourced by gpu_check.sh and gpu_validate.sh, from the
# repository root): $out (= $OUT or ./gpu-out), PYTHONPATH on the checkout, $py, a time
# budget of GPU_CHECK_BUDGET_S seconds (default 470) and `step NAME CAP_S CMD...`, which
# runs CMD under timeout min(CAP_S, time left) and logs its exit status and seconds to $log.
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python}"
budget="${GPU_CHECK_BUDGET_S:-470}"
start=$SECONDS
log="$out/${GPU_LOG_NAME:-gpu_check.log}"
: > "$log"

step() {
    local name=$1 cap=$2
    shift 2
    local left=$((budget - (SECONDS - start)))
    local limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "$name: skipped (budget of ${budget}s spent)" | tee -a "$log"
        return 0
    fi
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0))s (limit ${limit}s)" | tee -a "$log"
}
