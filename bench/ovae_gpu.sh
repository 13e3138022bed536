#!/bin/bash
# The shipped O-VAE recipe on one GPU, one part per call (each fits a 10-minute device call):
#   bench/ovae_gpu.sh enc NAME [osd train args]            an encoder, exported with the shipped decoder
#   bench/ovae_gpu.sh dec NAME ENCODER [osd train args]    a decoder on `mix:ENCODER`, exported with ENCODER
# The shipped decoder's two stages (docs/BENCHMARKS.md, 2026-11-27 07:25): `dec units ENC --hidden 168 --mix-teacher 0.8
# --seed 1 --max-minutes 15 --first-tick-seconds 800` (two calls, the first cut by the cap), then `dec dec ENC --hidden 168
# --seed 1 --init $W/units --mix-teacher 0.55 --tick-seconds 90 --max-minutes 8` (later options override the defaults
# below). The readout stage held its final score from its first 90-second tick on. Those units grew by the cascade: add
# --refine 0 to the first call to repeat it (a fresh one-layer decoder starts from random units since 2026-12-05).
# Each call then runs `osd eval pipeline` on VAL. The store is built once per machine (W/st6). Paths (defaults: a
# .gpu/ folder carried to the device): TRAIN photos and frames, TEACHER, VAL photos, W work dir, DEVICE, VAL_FRACTION;
# results (model, config, report.json) are copied to OUT/NAME when OUT is set. docs/BENCHMARKS.md.
# A run cut short (`timeout -s INT`, the 10-minute call cap) resumes with the same command while the machine
# is still held; OUT/NAME/run keeps its folder in case the machine goes: copy it back to W/NAME to resume.
set -eo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OSD="python3 -m organic_sd.cli"
TRAIN=${TRAIN:-.gpu/train} TEACHER=${TEACHER:-.gpu/taef2} VAL=${VAL:-.gpu/cset14} W=${W:-/tmp/w} DEVICE=${DEVICE:-cuda} VAL_FRACTION=${VAL_FRACTION:-0.05}
part=$1 name=$2; shift 2
mkdir -p "$W"
[ -z "$OUT" ] || trap 'mkdir -p "$OUT/$name" && cp -r "$W/$name" "$OUT/$name/run" 2>/dev/null || true' EXIT
[ -f "$W/st6/.done" ] || { $OSD precompute "$TRAIN" --teacher "$TEACHER" --out "$W/st6" --views 6 --batch 32 \
    --val-fraction "$VAL_FRACTION" --device "$DEVICE" 2>&1 | tail -1; touch "$W/st6/.done"; }
T=(--store "$W/st6" --device "$DEVICE" --tick-seconds 40 --population 160 --out "$W/$name")
case $part in
  enc) $OSD train encoder "${T[@]}" --max-rows 600000 --window 16 --hidden 192 --max-minutes 6.7 \
           --first-tick-seconds 280 "$@"
       $OSD export --encoder "$W/$name" --decoder organic_sd/assets/ovae/ovae.safetensors --out "$W/$name.safetensors" ;;
  dec) enc=$1; shift
       $OSD train decoder "${T[@]}" --max-rows 2400000 --latents "mix:$enc" --window 5 --hidden 64 \
           --max-minutes 5.5 --first-tick-seconds 315 "$@"
       $OSD export --encoder "$enc" --decoder "$W/$name" --out "$W/$name.safetensors" ;;
  *) echo "usage: $0 enc|dec NAME [ENCODER] [osd train args]" >&2; exit 2 ;;
esac
$OSD eval pipeline "$VAL" --ovae "$W/$name.safetensors" --teacher "$TEACHER" --out "$W/ev_$name" 2>&1 | tail -7
if [ -n "$OUT" ]; then
  mkdir -p "$OUT/$name"
  cp "$W/$name"/{model.safetensors,config.json,state.json} "$W/ev_$name/report.json" "$OUT/$name/"
fi
