#!/usr/bin/env python3
"""What permessage-deflate (RFC 7692) would cost the gateway per message.

Compresses typical server-to-client bodies the way a WebSocket server would:
raw deflate, one sync flush per message, the 4-byte tail removed; once with
context takeover (the window kept between messages, the usual browser
offer) and once without. Prints microseconds per message on this machine,
the bytes saved, and zlib's memory per connection for each window size
(from zlib's documented formula, zconf.h).

    python3 bench/deflate_cost.py [messages]
"""
import json
import sys
import time
import zlib

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000

def bodies():
    chat = [json.dumps({"msg": f"hello number {i}", "from": "player42", "target": "*"}).encode()
            for i in range(64)]
    proto = [b"\x0a" + bytes([len(m)]) + m + b"\x12\x08player42\x1a\x01*"
             for m in (f"hello number {i}".encode() for i in range(64))]
    state = [json.dumps({"tick": i, "players": [{"id": p, "x": p * 3 + i, "y": p * 7 - i, "hp": 100 - p}
                                               for p in range(16)]}).encode() for i in range(64)]
    return {"onChat JSON (~60 B)": chat, "onChat protobuf (~30 B)": proto, "state JSON (~1 KiB)": state}

def run(messages, takeover, wbits, mem):
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits, mem)
    raw = out = 0
    started = time.perf_counter()
    for i in range(N):
        m = messages[i % len(messages)]
        if not takeover:
            c = zlib.compressobj(6, zlib.DEFLATED, -wbits, mem)
        z = c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH)
        raw += len(m)
        out += len(z) - 4
    return (time.perf_counter() - started) / N * 1e6, out / raw

# (window bits, memLevel): zlib's defaults, and the smallest bounded setting.
SETTINGS = ((15, 8), (9, 1))
print(f"{N} messages each, zlib {zlib.ZLIB_VERSION}, level 6")
print(f"{'body':26} {'window':>7} {'memLevel':>8} {'takeover':>9} {'us/msg':>7} {'size after':>10}")
for name, messages in bodies().items():
    for wbits, mem in SETTINGS:
        for takeover in (True, False):
            us, ratio = run(messages, takeover, wbits, mem)
            print(f"{name:26} {2**wbits:>7} {mem:>8} {str(takeover):>9} {us:7.2f} {ratio:9.0%}")
for wbits, mem in SETTINGS:
    deflate = (1 << (wbits + 2)) + (1 << (mem + 9))
    inflate = (1 << wbits) + 7 * 1024
    print(f"zlib memory per connection, window {2**wbits}, memLevel {mem}: deflate {deflate / 1024:.0f} KiB "
          f"+ inflate {inflate / 1024:.0f} KiB (with context takeover both stay allocated)")
