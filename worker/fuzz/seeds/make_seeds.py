#!/usr/bin/env python3
"""Writes the seed corpus of the header_to_tree target: Header frame bodies
(postcard) of a few small trees, sound and hostile. Run from this directory:
    python3 make_seeds.py
postcard: varints (LEB128) for lengths and integers, zigzag for i64, one
varint per enum variant index, 0/1 before an Option's value, arrays raw."""
import hashlib


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return varint(len(b)) + b


def opt(value, enc):
    return b"\x00" if value is None else b"\x01" + enc(value)


DIR, FILE, SYMLINK, HARDLINK, CHARDEV, BLOCKDEV, FIFO = range(7)


def entry(path, kind, size=0, link=None, xattrs=(), sha=None, source=(0,), mode=0o644):
    body = s(path) + varint(kind) + varint(mode) + varint(0) + varint(0)
    body += varint(2 * 1_700_000_000) + varint(0) + varint(size)  # zigzag mtime
    body += opt(link, s) + varint(0) + varint(0)
    body += varint(len(xattrs)) + b"".join(s(k) + s(v) for k, v in xattrs)
    body += opt(sha, lambda x: x) + varint(0)  # layer 0
    body += varint(source[0]) + (varint(source[1]) if source[0] == 1 else b"")
    return body


def header(toc, payloads=()):
    manifest = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    body = s(digest) + s("application/vnd.oci.image.manifest.v1+json")
    body += s(manifest) + s(b"{}")
    body += varint(1) + s("sha256:" + hashlib.sha256(b"layer").hexdigest())
    body += varint(1) + varint(0)
    body += varint(len(toc)) + b"".join(toc)
    body += varint(len(payloads))
    for sha, clen, size in payloads:
        body += sha + varint(1) + varint(clen) + varint(size)  # zstd
    return body


def sha(data):
    return hashlib.sha256(data).digest()


SOUND = [
    entry("", DIR, mode=0o755),
    entry("bin", DIR, mode=0o755),
    entry("bin/sh", FILE, size=5, sha=sha(b"hello"), source=(1, 0), mode=0o755),
    entry("bin/sh2", HARDLINK, link="bin/sh", size=5, sha=sha(b"hello"), source=(1, 0)),
    entry("etc", DIR, mode=0o755, xattrs=[("user.a", b"1")]),
    entry("etc/empty", FILE),
    entry("etc/link", SYMLINK, link="../bin/sh"),
    entry("dev/null", CHARDEV, mode=0o666),
    entry("run/fifo", FIFO),
]

SEEDS = {
    "sound": header(SOUND, [(sha(b"hello"), 14, 5)]),
    "implicit-dirs": header([entry("a/b/c/d", FILE), entry("a/b", DIR)]),
    "dotdot": header([entry("../etc/passwd", FILE)]),
    "dup": header([entry("a", FILE), entry("a", DIR)]),
    "link-loop": header([entry("x", HARDLINK, link="y"), entry("y", HARDLINK, link="x")]),
    "file-over-dir": header([entry("a", FILE), entry("a/b", FILE)]),
}

for name, body in SEEDS.items():
    with open(name, "wb") as f:
        f.write(body)
