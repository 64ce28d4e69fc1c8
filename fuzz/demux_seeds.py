"""Seeds for the `demux` fuzz target: `python3 demux_seeds.py corpus/demux ../media-samples`.

Writes small bare clusters (the first two clusters of each sample, 12 SimpleBlocks each cut
to 200 bytes) and two synthetic clusters (Xiph, EBML and fixed lacing; a BlockGroup). Each
file is one selector byte (session, TimecodeScale, producer time; see the target) followed
by the cluster."""
import sys, os, struct
out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def read_vint(b, p, strip=True):
    first = b[p]; n = 1
    while n <= 8 and not (first & (0x80 >> (n-1))): n += 1
    v = first & ((0x80 >> (n-1)) - 1) if strip else first
    for i in range(1, n): v = (v << 8) | b[p+i]
    return v, n

def size(n):
    for l in range(1, 9):
        if n < (1 << (7*l)) - 1:
            return ((1 << (7*l)) | n).to_bytes(l, 'big') if l < 8 else (0x01 << 56 | n).to_bytes(8, 'big')
def el(id_bytes, payload): return id_bytes + size(len(payload)) + payload
def uint(v):
    b = v.to_bytes(8, 'big').lstrip(b'\0') or b'\0'; return b

def children(b, p, end):
    while p < end:
        i, il = read_vint(b, p, strip=False); s, sl = read_vint(b, p+il)
        h = il + sl
        if s == (1 << (7*sl)) - 1: s = end - p - h
        yield b[p:p+il], b[p+h:p+h+s]
        p += h + s

def clusters(path, nblocks, maxlen):
    b = open(path, 'rb').read()
    p = b.find(b'\x1f\x43\xb6\x75')
    res = []
    while p >= 0 and len(res) < 2:
        s, sl = read_vint(b, p+4)
        kids = []
        nb = 0
        for cid, data in children(b, p+4+sl, min(len(b), p+4+sl+s)):
            if cid == b'\xe7': kids.append(el(cid, data))
            elif cid == b'\xa3' and nb < nblocks:
                kids.append(el(cid, data[:maxlen])); nb += 1
        res.append(el(b'\x1f\x43\xb6\x75', b''.join(kids)))
        p = b.find(b'\x1f\x43\xb6\x75', p+4)
    return res

n = 0
def put(sel, cluster):
    global n; n += 1
    open(os.path.join(out, f'seed_{n:02}'), 'wb').write(bytes([sel]) + cluster)

for f, sel in [('h264_aac_720p_gop1s.mkv', 0x00), ('h264_720p_gop1s.mkv', 0x80), ('h264_cluster_nokey.mkv', 0x80), ('h265_720p_gop1s.mkv', 0x81)]:
    for c in clusters(os.path.join(sys.argv[2], f), 12, 200):
        put(sel, c)
tc = el(b'\xe7', uint(1000))
def sb(track, rel, flags, body): return el(b'\xa3', bytes([0x80 | track]) + struct.pack('>h', rel) + bytes([flags]) + body)
put(0, el(b'\x1f\x43\xb6\x75', tc + sb(1, 0, 0x80, b'\0\0\0\x02\x65\x88') + sb(2, 0, 0x82, bytes([2, 3, 4]) + b'abcdefghij') + sb(2, 21, 0x86, bytes([2, 0x83, 0xc0]) + b'abcdefghijk') + sb(2, 42, 0x84, bytes([1]) + b'abcd')))
bg = el(b'\xa0', el(b'\xa1', bytes([0x81, 0, 33, 0]) + b'\0\0\0\x02\x41\x9a') + el(b'\x9b', uint(33)) + el(b'\xfb', uint(33)))
put(0x08, el(b'\x1f\x43\xb6\x75', tc + sb(1, 0, 0x80, b'\0\0\0\x02\x65\x88') + bg))
print(n, 'seeds')
