#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target (fuzz/corpus/TARGET/seed-*):
the attack inputs of issue 11 (tests/hardening.rs, tests/differential.rs
and the security probe) and a few plain messages. Each file is the
target's input: a flag byte, three split points (see wayfinder_fuzz::Input)
and the bytes. Run from anywhere: python3 fuzz/seeds.py
"""
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))

H = b"Host: b.svc\r\n"
SMUG = b"GET /smuggled HTTP/1.1\r\nHost: b.svc\r\n\r\n"
AFTER = b"GET /after HTTP/1.1\r\nHost: b.svc\r\nConnection: close\r\n\r\n"
CAPTURE = b"POST /capture HTTP/1.1\r\nHost: b.svc\r\nContent-Length: 90\r\n\r\n"
WEBSOCKET = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def req(first, *headers, body=b"", host=True):
    h = (H if host else b"") + b"".join(x + b"\r\n" for x in headers)
    return first + b"\r\n" + h + b"\r\n" + body


def post(*headers, body=b""):
    return req(b"POST / HTTP/1.1", *headers, body=body)


def te(body):
    return post(b"Transfer-Encoding: chunked", body=body)


CHUNKED_BODIES = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;a=b\r\nhello\r\n0;x\r\n\r\n",
    b"5 ; a\r\nhello\r\n0\r\n\r\n",
    b"5;a=\"q\\\"x\"\r\nhello\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",
    b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    b"00000000000000005\r\nhello\r\n0\r\n\r\n",
    b"fffffffffffffff0\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5\t\r\nhello\r\n0\r\n\r\n",
    b"5 6\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b"5;a\nhello\r\n0\r\n\r\n",
    b"5;\x00\r\nhello\r\n0\r\n\r\n",
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\r\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX\r\n0\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n",
    b"5\r\nhello\r\n0\r\n\n" + SMUG,
    b"5\r\nhello\r\n0\r\nX: a\n\n" + SMUG,
    b"5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX: a\rb\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n",
    b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-A: 1\r\nX-B: 2\r\nChecksum: abc\r\n\r\n",
    b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n"
    b"Trailer: x-a\r\nX-A: abc\r\n\r\n",
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
]

REQUESTS = [
    req(b"GET / HTTP/1.1"),
    post(b"Content-Length: 5", body=b"hello"),
    # Issue 11 item 1: Connection lists a framing field.
    post(b"Connection: content-length", b"Content-Length: 43", body=SMUG),
    post(b"Connection: keep-alive, Content-Length", b"Content-Length: 43", body=SMUG),
    post(b"Connection: transfer-encoding", b"Transfer-Encoding: chunked",
         body=b"5\r\nhello\r\n0\r\n\r\n" + AFTER),
    post(b"Connection: content-length", b"Content-Length: 61", body=CAPTURE),
    req(b"GET /h HTTP/1.1", b"Connection: host"),
    req(b"GET /h HTTP/1.1", b"X-Forwarded-Proto: https", b"Connection: x-forwarded-proto, close"),
    # CL and TE.
    post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nX"),
    post(b"Transfer-Encoding: chunked", b"Content-Length: 4",
         body=b"5c\r\nGPOST / HTTP/1.1\r\nContent-Type: x\r\nContent-Length: 15\r\n\r\nx=1"
         + b"A" * 19 + b"\r\n0\r\n\r\n"),
    post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
    post(b"Content-Length: 5", b"Content-Length: 05", body=b"hello"),
    post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
    post(b"Content-Length: 5, 5", body=b"hello"),
    post(b"Content-Length: +5", body=b"hello"),
    post(b"Content-Length: 005", body=b"hello"),
    post(b"Content-Length:  5  ", body=b"hello"),
    post(b"Content-Length: 0x5", body=b"hello"),
    post(b"Content-Length: "),
    post(b"Content-Length: 99999999999999999999", body=b"x"),
    post(b"Content-Length: 5\xc2\xa0", body=b"hello"),
    post(b"Content-Length: 0"),
    post(b"Content-Length: 00", body=AFTER),
    req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    post(b"Transfer-Encoding : chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    post(b"Transfer_Encoding: chunked", body=b"0\r\n\r\n"),
    post(b"Content_Length: 5", body=b"hello"),
    post(b"Transfer-Encoding:\r\n chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    post(b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    post(b"Trailer: X-Checksum", b"Transfer-Encoding: chunked",
         body=b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n"
         b"Trailer: x-checksum\r\nX-Checksum: abc\r\n\r\n" + AFTER),
    # Host and target forms (item 4).
    req(b"GET http://a.example/x HTTP/1.1", host=False) + b"",
    b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    b"GET a.example HTTP/1.1\r\nHost: b.example\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: b.example evil\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: b.example/x?y\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: user:pw@b.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    b"CONNECT b.example:80 HTTP/1.1\r\nHost: b.example:80\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: b.example\r\n\r\n",
    b"GET ?q HTTP/1.1\r\nHost: b.example\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: b.svc\r\n\r\n",
    b"GET / HTTP/1.1\nHost: b.svc\nX: y\n\n",
    b"GET / HTTP/1.1\r\n X: y\r\nHost: b.svc\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # Upgrades (item 5).
    req(b"GET /ws HTTP/1.1", WEBSOCKET.rstrip(b"\r\n")),
    req(b"GET /x HTTP/1.1", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
    req(b"GET /x HTTP/1.1", b"Expect: 100-continue", b"Content-Length: 2", body=b"ok"),
    req(b"GET /x HTTP/1.1", b"Expect: something"),
    # Header trust.
    req(b"GET /t HTTP/1.1", b"X-Forwarded-For: 6.6.6.6", b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: admin.internal", b"Forwarded: for=6.6.6.6;proto=https", b"Via: 1.0 other"),
    req(b"GET / HTTP/1.1", b"Proxy-Authorization: Basic Zm9vOmJhcg==", b"Authorization: Bearer t",
        b"Proxy-Connection: keep-alive", b"Keep-Alive: 5", b"TE: trailers"),
    req(b"GET / HTTP/1.1", *[b"X-%d: v" % i for i in range(130)]),
] + [te(b) for b in CHUNKED_BODIES] + [
    post(b"Transfer-Encoding:" + v, body=b"5\r\nhello\r\n0\r\n\r\n" + AFTER)
    for v in [b" chunked ", b"\tchunked", b" Chunked", b" CHUNKED", b" xchunked",
              b" chunked, identity", b" identity, chunked", b" gzip, chunked", b" chunked;q=1",
              b" \"chunked\"", b" chunked\x0b", b" chunked\xa0"]
]

POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 204 No Content\r\n\r\n" + POISON,
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody until close",
    b"HTTP/1.1 200 OK\r\nX: a\nInjected: 1\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rInjected: 1\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\n Injected: 1\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 \xff\xfe OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + POISON,
    b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 099 Weird\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 000 Zero\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 999 Nine\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nRAW",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nrawbytes",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Injected: yes\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTrailer: X-A\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    b"Content-Length: 9\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=b\r\nX-A: abc\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 70 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok" + POISON,
    b"HTTP/1.1 200 OK\r\nProxy-Authenticate: Basic realm=\"u\"\r\nWWW-Authenticate: Basic\r\n"
    b"Keep-Alive: timeout=5\r\nConnection: close, x-a\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
]

CONFIGS = [
    b"listen = [\"127.0.0.1:8080\"]\n\n[services.api]\ninstances = [\"127.0.0.1:9001\"]\n",
    b"listen = [\"127.0.0.1:8080\"]\n\n[admin]\nlisten = \"127.0.0.1:9090\"\n\n"
    b"[timeouts]\nconnect = \"250ms\"\n\n[services.api]\ninstances = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n"
    b"balance = \"least_connections\"\n\n[[routes]]\nhost = \"api.example\"\nservice = \"api\"\n",
    b"listen = [\"127.0.0.1:8080\"]\n[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\nforwarded = true\n",
    b"listen = [\"127.0.0.1:8080\"]\n[limits]\nmax_header_bytes = 0\nmax_uri_bytes = -1\n",
    b"listen = \"nope\"\n[services.\"bad name\"]\ninstances = [\"x\"]\n",
    b"[services.a]\ninstances = [\"127.0.0.1:1\"]\n[services.a.health]\ninterval = \"1x\"\n",
    b"unknown_key = 1\n",
    b"[[routes]]\npath = \"/x\"\nservice = \"missing\"\n",
]


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    with open(os.path.join(d, f"seed-{name}-{digest}"), "wb") as f:
        f.write(data)


def main():
    for i, r in enumerate(REQUESTS):
        # Flags: untrusted, then trusted with Forwarded; whole, then in pieces.
        write("request_head", f"r{i:03}", bytes([0, 0, 0, 0]) + r)
        write("request_head", f"r{i:03}s", bytes([3, 40, 128, 230]) + r)
    for i, r in enumerate(RESPONSES):
        write("response_head", f"r{i:03}", bytes([2, 0, 0, 0]) + r)
        write("response_head", f"r{i:03}s", bytes([7, 60, 140, 220]) + r)
    for i, b in enumerate(CHUNKED_BODIES):
        write("chunked", f"c{i:03}", bytes([0, 0, 0, 0]) + b)
        write("chunked", f"c{i:03}s", bytes([15, 30, 120, 240]) + b)
    for i, c in enumerate(CONFIGS):
        write("config", f"c{i:03}", c)
    examples = os.path.join(HERE, "..", "config")
    for name in sorted(os.listdir(examples)):
        path = os.path.join(examples, name)
        if name.endswith(".toml") and os.path.isfile(path):
            with open(path, "rb") as f:
                write("config", name[:-5], f.read())


if __name__ == "__main__":
    main()
