#!/usr/bin/env bash
# The whole test suite (`make test`), as two groups that run at the same time:
#   vm:    the test files that boot QEMU (CPU-bound under TCG), one test at a time;
#   other: unit tests, composes, sysroots, publish, reproducibility (mostly mmdebstrap,
#          dpkg and disk I/O), one test at a time.
# Shared fixtures (the base compose, the apt cache) are guarded by file locks, so the
# groups only wait for each other where they share work. A test file belongs to the vm
# group when it calls `Vm::start`. Output lines carry the group's name; the failures of
# both groups are listed again at the end. Exit status: 0 when both groups passed.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

vm=()
other=()
for f in tests/*.rs; do
    name=$(basename "$f" .rs)
    if grep -q 'Vm::start' "$f"; then
        vm+=(--test "$name")
    else
        other+=(--test "$name")
    fi
done

# Build everything once, before the groups start (they would wait on cargo's lock).
$CARGO test --release --no-run --all-targets || exit 1

mkdir -p build
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

t0=$SECONDS
run_group vm $CARGO test --release --no-fail-fast "${vm[@]}" -- --test-threads=1 &
run_group other bash -c '"$0" test --release --no-fail-fast --lib --bins "$@" -- --test-threads=1 \
    && "$0" test --release --doc' "$CARGO" "${other[@]}" &
wait

status=0
for group in vm other; do
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
