#!/bin/bash
# A/B: old vs new mfio-bench, interleaved, adaptive over UCX.
OLD=$HOME/.cache/mfio-old/release/mfio-bench
NEW=$HOME/.cache/mfio-release/release/mfio-bench
OUT=${OUT:-/tmp/ab}
rm -rf $OUT; mkdir -p $OUT
cd /tmp
for i in 1 2 3; do
  for v in old new; do
    B=OLD; [ $v = new ] && B=NEW
    ${!B} coll --transports ucx --only-adaptive --sizes ${SIZES:-65536,1048576,16777216} --reps 5 --out $OUT/$v-$i > $OUT/$v-$i.log 2>&1
  done
done
