#!/usr/bin/env python3
"""Prints the cluster layout of a Matroska/WebM file: per cluster its offset, size,
timecode, block count, whether the first block and the first video block are keyframes.
Standard library only. Usage: python3 media-samples/layout.py FILE..."""
import sys

SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY = 0x18538067, 0x1F43B675, 0x1654AE6B, 0xAE
TRACK_NUMBER, TRACK_TYPE, CODEC_ID = 0xD7, 0x83, 0x86
TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP, BLOCK = 0xE7, 0xA3, 0xA0, 0xA1
LEVEL1 = {0x114D9B74, 0x1549A966, TRACKS, CLUSTER, 0x1C53BB6B, 0x1941A469, 0x1043A770, 0x1254C367}


def read_id(b, p):
    first = b[p]
    n = 1
    while n <= 4 and not first & (0x80 >> (n - 1)):
        n += 1
    if n > 4 or p + n > len(b):
        raise ValueError(f"bad element id at {p}")
    return int.from_bytes(b[p:p + n], "big"), p + n


def read_size(b, p):
    first = b[p]
    n = 1
    while n <= 8 and not first & (0x80 >> (n - 1)):
        n += 1
    if n > 8 or p + n > len(b):
        raise ValueError(f"bad size at {p}")
    v = first & ((0x80 >> (n - 1)) - 1)
    for x in b[p + 1:p + n]:
        v = (v << 8) | x
    unknown = v == (1 << (7 * n)) - 1
    return (None if unknown else v), p + n


def track_types(b, p, end):
    types = {}
    while p < end:
        eid, q = read_id(b, p)
        size, q = read_size(b, q)
        if eid == TRACK_ENTRY:
            num = ttype = None
            codec = ""
            r = q
            while r < q + size:
                cid, s = read_id(b, r)
                csize, s = read_size(b, s)
                val = b[s:s + csize]
                if cid == TRACK_NUMBER:
                    num = int.from_bytes(val, "big")
                elif cid == TRACK_TYPE:
                    ttype = int.from_bytes(val, "big")
                elif cid == CODEC_ID:
                    codec = val.rstrip(b"\0").decode()
                r = s + csize
            types[num] = (ttype, codec)
        p = q + size
    return types


def block_info(b, p):
    track, q = read_size(b, p)
    return track, b[q + 2]


def main(path):
    b = open(path, "rb").read()
    print(f"{path}: {len(b)} bytes")
    p = 0
    tracks = {}
    clusters = []
    try:
        while p < len(b):
            eid, q = read_id(b, p)
            size, q = read_size(b, q)
            if eid == SEGMENT:
                p = q  # descend
                continue
            if eid == TRACKS:
                tracks = track_types(b, q, q + size)
            if eid == CLUSTER:
                c = {"off": p, "tc": None, "blocks": 0, "first_key": None, "first_video_key": None, "first_kind": None}
                r = q
                end = len(b) if size is None else min(q + size, len(b))
                while r < end:
                    cid, s = read_id(b, r)
                    if size is None and cid in LEVEL1:
                        break
                    csize, s = read_size(b, s)
                    if cid == TIMECODE:
                        c["tc"] = int.from_bytes(b[s:s + csize], "big")
                    elif cid in (SIMPLE_BLOCK, BLOCK_GROUP):
                        if cid == BLOCK_GROUP:
                            _, t = read_id(b, s)
                            _, t = read_size(b, t)
                            track, flags = block_info(b, t)
                            key = None  # BlockGroup: key unless ReferenceBlock; not needed here
                        else:
                            track, flags = block_info(b, s)
                            key = bool(flags & 0x80)
                        c["blocks"] += 1
                        if c["first_kind"] is None:
                            c["first_key"] = key
                            t = tracks.get(track, (None,))[0]
                            c["first_kind"] = "video" if t == 1 else "audio" if t == 2 else str(t)
                        if c["first_video_key"] is None and tracks.get(track, (None,))[0] == 1:
                            c["first_video_key"] = key
                    if csize is None:
                        raise ValueError(f"unknown-size child at {r}")
                    r = s + csize
                c["size"] = (r if size is None else q + size) - p
                c["complete"] = (r if size is None else q + size) <= len(b)
                clusters.append(c)
                p = p + c["size"]
                continue
            if size is None:
                raise ValueError(f"unknown-size element {eid:#x} at {p}")
            p = q + size
    except (ValueError, IndexError) as e:
        print(f"  parse stopped at element starting {p}: {e}")
    print("  tracks: " + ", ".join(f"{n}={'video' if t == 1 else 'audio' if t == 2 else t}:{c}"
                                   for n, (t, c) in sorted(tracks.items())))
    for i, c in enumerate(clusters):
        nxt = clusters[i + 1]["tc"] if i + 1 < len(clusters) else None
        span = f"{nxt - c['tc']:5d} ms" if nxt is not None and c["tc"] is not None else "       "
        print(f"  cluster {i:2d} @{c['off']:8d} size {c['size']:7d} tc {c['tc']} {span} blocks {c['blocks']:3d}"
              f" first block: {c['first_kind']} key={c['first_key']}; first video block key={c['first_video_key']}"
              f"{'' if c['complete'] else ' TRUNCATED'}")
    keyed = sum(1 for c in clusters if c["first_video_key"])
    print(f"  {len(clusters)} clusters, {keyed} start (first video block) with a keyframe")


if __name__ == "__main__":
    for f in sys.argv[1:]:
        main(f)
