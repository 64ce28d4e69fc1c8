#!/usr/bin/env bash
# Regenerates the sample media in this folder from ffmpeg's lavfi test sources.
# Deterministic: the same ffmpeg/x264/x265 build gives byte-identical files (bitexact flags,
# one thread). Recipes follow ../shared/docs/media-tools.md §6.
#
#   bash media-samples/make.sh            # (re)write the samples and print md5s/sizes
#   bash media-samples/make.sh --check    # regenerate into a temp dir and compare md5s
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="${1:-write}"

command -v ffmpeg >/dev/null || { echo "make.sh: ffmpeg not found (apt-get install ffmpeg)" >&2; exit 1; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

F=(ffmpeg -nostdin -hide_banner -loglevel error -y)
V720=(-f lavfi -i testsrc2=size=1280x720:rate=30)
AUD=(-f lavfi -i sine=frequency=1000:sample_rate=48000)
BX=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -threads 1)
# Streamed-style Matroska: no Cues/Duration; clusters are cut only at keyframes.
LIVE=(-f matroska -live 1 -cluster_time_limit 10000 -cluster_size_limit 10000000)
X264=(-c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p -b:v 1M -maxrate 1M -bufsize 1M -bf 0 -sc_threshold 0)

# 10 s H.264 720p30, 1 s GOP: one cluster per GOP, every cluster starts with an IDR.
"${F[@]}" "${V720[@]}" -t 10 "${BX[@]}" "${X264[@]}" -g 30 -keyint_min 30 "${LIVE[@]}" "$out/h264_720p_gop1s.mkv"

# Same video plus AAC: the first block of each cluster is audio, the first video block an IDR.
"${F[@]}" "${V720[@]}" "${AUD[@]}" -t 10 -map 0:v -map 1:a "${BX[@]}" "${X264[@]}" -g 30 -keyint_min 30 \
  -c:a aac -b:a 64k "${LIVE[@]}" "$out/h264_aac_720p_gop1s.mkv"

# H.265 (V_MPEGH/ISO/HEVC), 1 s GOP.
"${F[@]}" "${V720[@]}" -t 10 "${BX[@]}" -c:v libx265 -preset ultrafast -pix_fmt yuv420p -b:v 800k \
  -x265-params keyint=30:min-keyint=30:scenecut=0:bframes=0:log-level=error "${LIVE[@]}" "$out/h265_720p_gop1s.mkv"

# 2 s GOP cut into 500 ms clusters: only every 4th cluster starts with a keyframe.
"${F[@]}" "${V720[@]}" -t 10 "${BX[@]}" "${X264[@]}" -g 60 -keyint_min 60 \
  -f matroska -live 1 -cluster_time_limit 500 -cluster_size_limit 10000000 "$out/h264_cluster_nokey.mkv"

# The load generator's camera (`cameras` scenario): H.264 High with B-frames, constant
# 2 Mbit/s (x264 CBR with filler), 1 s GOP.
"${F[@]}" "${V720[@]}" -t 10 "${BX[@]}" -c:v libx264 -preset veryfast -profile:v high -pix_fmt yuv420p \
  -b:v 2M -minrate 2M -maxrate 2M -bufsize 2M -x264-params nal-hrd=cbr -sc_threshold 0 -g 30 -keyint_min 30 \
  "${LIVE[@]}" "$out/h264_high_2mbps_gop1s.mkv"

# The gop1s file cut off inside its 6th cluster.
head -c 700000 "$out/h264_720p_gop1s.mkv" > "$out/h264_truncated.mkv"

# The gop1s file with 4096 bytes of 0xFF written at offset 500000 (inside the 4th cluster).
cp "$out/h264_720p_gop1s.mkv" "$out/h264_corrupt.mkv"
head -c 4096 /dev/zero | tr '\0' '\377' \
  | dd of="$out/h264_corrupt.mkv" bs=4096 seek=500000 oflag=seek_bytes conv=notrunc status=none

files=(h264_720p_gop1s.mkv h264_aac_720p_gop1s.mkv h265_720p_gop1s.mkv h264_cluster_nokey.mkv
       h264_high_2mbps_gop1s.mkv h264_truncated.mkv h264_corrupt.mkv)

case "$mode" in
  write)
    for f in "${files[@]}"; do mv -f "$out/$f" "$here/$f"; done
    cd "$here"
    for f in "${files[@]}"; do
      printf '%s  %9d  %s\n' "$(md5sum "$f" | cut -c1-12)" "$(stat -c %s "$f")" "$f"
    done
    ;;
  --check)
    rc=0
    for f in "${files[@]}"; do
      a="$(md5sum < "$out/$f" | cut -c1-32)"
      b="$(md5sum < "$here/$f" 2>/dev/null | cut -c1-32 || true)"
      if [ "$a" = "$b" ]; then echo "same     $f"; else echo "DIFFERS  $f"; rc=1; fi
    done
    exit "$rc"
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
