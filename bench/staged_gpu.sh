#!/bin/bash
# The staged O-VAE pair on one GPU (issue 24), one step per 10-minute device call, as measured in docs/BENCHMARKS.md
# ("A longer staged O-Encoder, the carry at the feature shape, and the spread between seeds"):
#   bench/staged_gpu.sh enc NAME [osd train args]          staged O-Encoder 3:64 3:64 3:96 toward the teacher
#                                                          encoder's activations, 8 min (es8: cosine 0.759)
#   bench/staged_gpu.sh dec NAME [osd train args]          staged feature decoder 5:96 3:64:1 3:48:1 on teacher
#                                                          latents, 8.4 min (dLp: 23.44 dB; the carry, --stages
#                                                          5:96 3:64:1:1 3:48:1:1: +0.06 / +0.22 dB on two seeds;
#                                                          the best, dL32: --stages 5:96 5:64:1:1 3:48:1:1
#                                                          --max-minutes 16 --stage-shares 0.2 0.4 0.4, two calls,
#                                                          23.94 dB at 32,768 rows)
#   bench/staged_gpu.sh pair NAME DEC ENC [osd train args] DEC's stages re-fitted on rows 30% from ENC's latents,
#                                                          7.4 min (pm8 with es8: 23.48 / 24.03 dB; pmdLCs, the
#                                                          carry, 5 min: 23.58 / 24.15 dB; pmL7 from dL32, 3 min:
#                                                          23.97 / 24.38 dB; pmL5 at --mix-teacher 0.5:
#                                                          23.64 / 24.66, with --shift-seconds 60 (the global
#                                                          shift, fitted after the stages) 24.19 / 24.70 dB);
#                                                          give DEC's own --stages if it was not trained with the
#                                                          default
#   bench/staged_gpu.sh ref NAME [osd train args]          the Adam reference of `dec`'s shapes (or of the given
#                                                          --stages), 40 s a stage: bench/staged_reference.py
#   bench/staged_gpu.sh eref NAME [osd train args]         the same for `enc`'s staged O-Encoder
#   bench/staged_gpu.sh set14 NAME                         the pair W/NAME.safetensors on VAL (Set14): once, at
#                                                          the end, for the report of a pair the held-out split chose
# The fit's CUDA default of 32,768 rows per generation (4,096 before 2026-12-06) took stage 1 from 0.152 to 0.138
# relative error in the same seconds and `dec` from 23.57 to 23.75 dB (docs/BENCHMARKS.md, "Rows per generation on
# the GPU"); to repeat a run from before then, add --batch-size 4096.
# 8.4 minutes, not more, leave a 10-minute call room for the store, the teacher and the scoring after training.
# Every training step ends by scoring on the store's held-out split (bench/heldout_decoders.py; the set that chooses)
# into W/heldout_NAME.json. Later options override the defaults (e.g. --max-minutes, --seed, --stages). The store
# is built once per machine (W/st6: 6 views of each training photo, 10% of the photos held out). Paths (defaults: a
# .gpu/ folder carried to the device): TRAIN photos, TEACHER, VAL photos, W work dir, DEVICE; with OUT set, each
# step leaves OUT/NAME.tgz (the run folder, its log and scores; a step cut short too), so a run outlives the machine:
# untar it into W to resume or --init from it. A step cut by the call cap (`timeout -s INT`) resumes with the same
# command; to train past one call, give --max-minutes for both and cut the first call.
set -eo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OSD="python3 -m organic_sd.cli"
TRAIN=${TRAIN:-.gpu/train} TEACHER=${TEACHER:-.gpu/taef2} VAL=${VAL:-.gpu/cset14} W=${W:-/tmp/w} DEVICE=${DEVICE:-cuda}
step=$1 name=$2; shift 2
mkdir -p "$W"
# the pipes' readers ignore the call cap's INT, so the trainer's last lines, printed as it saves, still get through
last() { trap '' INT; tail "$@"; }
# on every exit, a step cut by the call cap too: what the step has written so far outlives the machine
pack() {
  local have; have=$(cd "$W" && ls -d "$name" "$name.safetensors" "heldout_$name.json" "set14_$name" 2>/dev/null || :)
  [ -z "$OUT" ] || [ -z "$have" ] || tar czf "$OUT/$name.tgz" -C "$W" $have
}
[ -z "$name" ] || trap pack EXIT
[ -f "$W/st6/.done" ] || { $OSD precompute "$TRAIN" --teacher "$TEACHER" --out "$W/st6" --views 6 --batch 32 \
    --val-fraction 0.1 --device "$DEVICE" 2>&1 | last -2; touch "$W/st6/.done"; }
common=(--store "$W/st6" --out "$W/$name" --device "$DEVICE" --teacher "$TEACHER" --feature-channels 16
        --population 160 --tick-seconds 40)
decoder=("${common[@]}" --stage-targets features --refine 0.9 --refine-start random --max-rows 1200000)
score() { python3 bench/heldout_decoders.py --store "$W/st6" --out "$W/heldout_$name.json" "$@" 2>&1 | last -2; }
case $step in
  enc) $OSD train encoder "${common[@]}" --stages 3:64 3:64 3:96 --stage-shares 0.5 0.25 0.25 --max-rows 600000 \
         --max-minutes 8 --seed 1 "$@" 2>&1 | last -3 ;;
  dec) $OSD train decoder "${decoder[@]}" --stages 5:96 3:64:1 3:48:1 --stage-shares 0.3 0.35 0.35 \
         --max-minutes 8.4 --seed 1 "$@" 2>&1 | last -3
       score --decoders "$name=$W/$name" ;;
  pair) dec=$1 enc=$2; shift 2
       $OSD train decoder "${decoder[@]}" --stages 5:96 3:64:1 3:48:1 --init "$W/$dec" --latents "mix:$W/$enc" \
         --mix-teacher 0.7 --stage-shares 0.2 0.3 0.5 --max-minutes 7.4 --seed 2 "$@" 2>&1 | last -3
       $OSD export --encoder "$W/$enc" --decoder "$W/$name" --out "$W/$name.safetensors"
       score --encoder "$W/$enc" --decoders "$name=$W/$name" ;;
  ref) python3 bench/staged_reference.py decoder "${decoder[@]}" --stages 5:96 3:64:1 3:48:1 --seed 1 \
         --adam-seconds 40 "$@" 2>&1 | (trap '' INT; grep -v '^  Adam') | last -4
       score --decoders "$name=$W/$name" ;;
  eref) python3 bench/staged_reference.py encoder "${common[@]}" --stages 3:64 3:64 3:96 --max-rows 600000 --seed 1 \
          --adam-seconds 40 "$@" 2>&1 | last -4 ;;
  set14) $OSD eval pipeline "$VAL" --ovae "$W/$name.safetensors" --teacher "$TEACHER" --out "$W/set14_$name" 2>&1 \
           | last -7 ;;
  *) echo "usage: bench/staged_gpu.sh enc|dec|pair|ref|eref|set14 NAME ..." >&2; exit 2 ;;
esac
