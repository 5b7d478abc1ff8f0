#!/usr/bin/env bash
# The whole test suite (`make test`), as three groups that run at the same time:
#   vm-a, vm-b: the test files that boot QEMU, one test at a time in each group. A TCG
#          guest keeps about one host core busy, so two of them fit a 2-core machine;
#   other: unit tests, composes, sysroots, publish, reproducibility (mostly mmdebstrap,
#          dpkg and disk I/O), one test at a time.
# The VM groups are chosen by file name: tests/vm_*.rs are the files whose tests boot a VM,
# every other tests/*.rs file is in "other" (tests/suite_layout.rs fails when a test
# outside vm_*.rs boots one, or a vm_*.rs test does not). A vm_*.rs file's first line
# `// suite-minutes: N` says how long it runs under TCG, and the files are dealt out
# longest first to the group with less work so far. Shared fixtures (the base compose,
# the apt cache) are guarded by file locks, so the groups only wait for each other where
# they share work. Output lines carry the group's name; the failures are listed again at
# the end, then the suite's wall time. Exit status: 0 when every group passed.
# SUITE_LIST_ONLY=1 prints the groups and exits without building or running anything.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

other=()
weighted=()
for f in tests/*.rs; do
    name=$(basename "$f" .rs)
    if [[ "$name" == vm_* ]]; then
        m=$(sed -n '1s|^// suite-minutes: \([0-9][0-9]*\).*|\1|p' "$f")
        if [[ -z "$m" ]]; then
            echo "suite: $f lacks its first line '// suite-minutes: N'" >&2
            exit 1
        fi
        weighted+=("$m $name")
    else
        other+=(--test "$name")
    fi
done
vm_a=()
vm_b=()
load_a=0
load_b=0
while read -r m name; do
    [[ -n "$name" ]] || continue
    if ((load_a <= load_b)); then
        vm_a+=(--test "$name")
        load_a=$((load_a + m))
    else
        vm_b+=(--test "$name")
        load_b=$((load_b + m))
    fi
done < <(printf '%s\n' "${weighted[@]}" | sort -rn)
names() {
    local x out=()
    for x in "$@"; do
        [[ "$x" == --test ]] || out+=("$x")
    done
    echo "${out[*]}"
}
echo "suite: vm-a (~${load_a} min): $(names "${vm_a[@]}")"
echo "suite: vm-b (~${load_b} min): $(names "${vm_b[@]}")"
echo "suite: other: $(names "${other[@]}") + unit and doc tests"
[[ -z "${SUITE_LIST_ONLY:-}" ]] || exit 0

# Build everything once, before the groups start (they would wait on cargo's lock).
$CARGO test --release --no-run --lib --bins --tests || exit 1

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

run_group() {
    local group=$1
    shift
    local t0=$SECONDS
    "$@" 2>&1 | tee "$logs/$group.log" | sed -u "s/^/[$group] /"
    local rc=${PIPESTATUS[0]}
    echo "[$group] finished in $((SECONDS - t0)) s, exit $rc"
    echo "$rc" > "$logs/$group.rc"
}

groups=(other)
t0=$SECONDS
run_group other bash -c '"$0" test --release --no-fail-fast --lib --bins "$@" -- --test-threads=1 \
    && "$0" test --release --doc' "$CARGO" "${other[@]}" &
if ((${#vm_a[@]})); then
    groups+=(vm-a)
    run_group vm-a $CARGO test --release --no-fail-fast "${vm_a[@]}" -- --test-threads=1 &
fi
if ((${#vm_b[@]})); then
    groups+=(vm-b)
    run_group vm-b $CARGO test --release --no-fail-fast "${vm_b[@]}" -- --test-threads=1 &
fi
wait

status=0
for group in "${groups[@]}"; do
    rc=$(cat "$logs/$group.rc" 2>/dev/null || echo 1)
    if [[ "$rc" != 0 ]]; then
        status=1
        echo "== $group: FAILED (exit $rc); failing tests:"
        grep -E '^test .* FAILED$|^error: .*target.* failed|^    `' "$logs/$group.log" || true
    else
        echo "== $group: passed"
    fi
done
echo "== whole suite: $((SECONDS - t0)) s"
exit "$status"
