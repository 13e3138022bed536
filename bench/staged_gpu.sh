#!/bin/bash
# A staged O-Decoder on one GPU in 8 minutes of training (issue 24), then its numbers on the store's held-out split
# (the set that chooses) and on Set14 (the set that reports, once, at the end):
#   bench/staged_gpu.sh NAME [osd train args]        e.g. bench/staged_gpu.sh st1 --stages 3:96 3:64 3:48
# Defaults: --stages 3:96 3:64 3:48 --stage-shares 0.5 0.25 0.25, latents mix:ENC (the shipped O-Encoder unless
# ENC is set) at --mix-teacher 0.8, toward the teacher's decode, so the decoder serves both latents.
# The store is built once per machine (W/st6, the shipped recipe's: 6 views of each training photo). Paths (defaults:
# a .gpu/ folder carried to the device): TRAIN photos, TEACHER, VAL photos (Set14), W work dir, DEVICE, ENC,
# VAL_FRACTION (0.1: ~15 photos' views held out to choose on); results are copied to OUT/NAME when OUT is set.
# One 10-minute device call: precompute (~1 min) + 8 min training; if the call cap cuts it (`timeout -s INT`), run
# the same command again while the machine is held: finished stages stay, the cut stage resumes.
set -eo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OSD="python3 -m organic_sd.cli"
TRAIN=${TRAIN:-.gpu/train} TEACHER=${TEACHER:-.gpu/taef2} VAL=${VAL:-.gpu/cset14} W=${W:-/tmp/w} DEVICE=${DEVICE:-cuda}
ENC=${ENC:-organic_sd/assets/ovae/ovae.safetensors} VAL_FRACTION=${VAL_FRACTION:-0.1} MINUTES=${MINUTES:-8}
name=$1; shift
mkdir -p "$W"
[ -z "$OUT" ] || trap 'mkdir -p "$OUT/$name" && cp -r "$W/$name" "$OUT/$name/run" 2>/dev/null || true' EXIT
[ -f "$W/st6/.done" ] || { $OSD precompute "$TRAIN" --teacher "$TEACHER" --out "$W/st6" --views 6 --batch 32 \
    --val-fraction "$VAL_FRACTION" --device "$DEVICE" 2>&1 | tail -1; touch "$W/st6/.done"; }
$OSD train decoder --store "$W/st6" --out "$W/$name" --device "$DEVICE" --population 160 --tick-seconds 40 \
    --max-rows 1200000 --latents "mix:$ENC" --mix-teacher 0.8 --seed 1 --max-minutes "$MINUTES" \
    --stages 3:96 3:64 3:48 --stage-shares 0.5 0.25 0.25 "$@"
$OSD export --encoder "$ENC" --decoder "$W/$name" --out "$W/$name.safetensors"
# choose on the store's held-out split (beside the shipped decoder); report on Set14 once
python3 bench/heldout_decoders.py --store "$W/st6" --encoder "$ENC" --out "$W/heldout_$name.json" \
    --decoders "shipped=organic_sd/assets/ovae/ovae.safetensors" "$name=$W/$name.safetensors"
$OSD eval pipeline "$VAL" --ovae "$W/$name.safetensors" --teacher "$TEACHER" --out "$W/ev_$name" 2>&1 | tail -7
if [ -n "$OUT" ]; then
  mkdir -p "$OUT/$name"
  cp "$W/$name"/config.json "$W/$name.safetensors" "$W/heldout_$name.json" "$W/ev_$name/report.json" "$OUT/$name/"
  for s in "$W/$name"/stage*; do cp "$s/log.jsonl" "$OUT/$name/$(basename "$s").log.jsonl"; done
fi
