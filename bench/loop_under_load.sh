#!/bin/bash
# Runs each named test binary N times in a row while two busy loops keep both
# cores busy, and prints one line per run and a pass count per test. A flaky
# test shows here; each run's node logs are kept under /tmp/loop-NAME/RUN/, and
# what the test printed (with --nocapture) in /tmp/loop-NAME/RUN.out.
#
#   cargo test --test partition_netns --test late_joiner_catches_up --no-run
#   bench/loop_under_load.sh 20 partition_netns late_joiner_catches_up
set -u
cd "$(dirname "$0")/.."
n=${1:?usage: bench/loop_under_load.sh N TEST_NAME...}
shift
timeout 7200 yes >/dev/null & y1=$!
timeout 7200 yes >/dev/null & y2=$!
trap 'kill $y1 $y2 2>/dev/null' EXIT
for name in "$@"; do
  # The newest test executable: NAME-<16 hex digits>, no extension.
  bin=$(ls -t target/debug/deps/"${name}"-???????????????? 2>/dev/null | head -1)
  if [ -z "$bin" ]; then echo "no test binary for $name: build it with cargo test --test $name --no-run"; exit 2; fi
  mkdir -p "/tmp/loop-$name"
  pass=0
  for i in $(seq 1 "$n"); do
    s=$(date +%s)
    if STARLING_TEST_LOGS="/tmp/loop-$name/$i" timeout 900 "$bin" --nocapture > "/tmp/loop-$name/$i.out" 2>&1; then
      pass=$((pass + 1)); r=ok
    else
      r=FAIL
    fi
    echo "$name run $i $r $(( $(date +%s) - s ))s load=$(cut -d' ' -f1 /proc/loadavg)"
  done
  echo "$name passed $pass/$n"
done
