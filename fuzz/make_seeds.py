#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ from the spec vectors
(spec/vectors/*.json), a few hand-made frames and policies, and CSRs and certificates made with
the `openssl` command. Run from the repository root: python3 fuzz/make_seeds.py

The committed corpus is what this wrote once; re-running rewrites the files whose content does
not depend on randomness (CSRs, certificates and ES256 signatures do)."""
import base64, json, os, shutil, struct, subprocess, tempfile, glob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def vectors(name):
    with open(os.path.join(ROOT, "spec", "vectors", name + ".json")) as f:
        return json.load(f)["cases"]


def pairs_of(chain):
    out = []
    for tok in chain.split("~"):
        h, p, _ = tok.split(".")
        out += [b64d(h), b64d(p)]
    return b"\0".join(out)


valid = vectors("valid")
negative = {n: vectors(n) for n in ["attenuation", "claims", "time", "revocation", "framing", "headers", "possession_audience", "authorization", "signatures"]}

# chain_decode: raw chains and a whole vector input.
for c in [c for c in valid if c["input"].get("chain")][:6]:
    put("chain_decode", "valid-" + c["id"], c["input"]["chain"])
for n in ["framing", "headers", "claims", "signatures"]:
    for c in negative[n][:3]:
        if c["input"].get("chain"):
            put("chain_decode", n + "-" + c["id"], c["input"]["chain"])
put("chain_decode", "vector-input", json.dumps(valid[0]["input"]))
put("chain_decode", "scope", "files:read files:* tickets:a:b")

# chain_signed: flags (bit 0 fix prev, bit 1 peer from chain, bits 3.. template), then pairs.
for i, c in enumerate(valid):
    if not c["input"].get("chain"):
        continue
    put("chain_signed", "valid-" + c["id"], bytes([3 | (i << 3)]) + pairs_of(c["input"]["chain"]))
for n in ["attenuation", "time", "revocation", "possession_audience", "authorization", "claims"]:
    for c in negative[n][:4]:
        ch = c["input"].get("chain")
        if ch:
            put("chain_signed", n + "-" + c["id"], bytes([3]) + pairs_of(ch))

# frame: every frame type, and a stream of several.
def frame(ty, body):
    return struct.pack(">IB", len(body), ty) + body

proof_case = [c for c in vectors("proofs") if c["expected"].get("valid")][0]
hello = json.dumps({"chain": [c for c in valid if c["input"].get("chain")][1]["input"]["chain"], "proof": proof_case["input"]["proof"]["compact"]}).encode()
accept = json.dumps({"proof": proof_case["input"]["proof"]["compact"]}).encode()
reason = json.dumps({"code": "revoked", "message": "the peer's key is revoked"}).encode()
put("frame", "hello", frame(1, hello))
put("frame", "accept", frame(2, accept))
put("frame", "reject", frame(3, reason))
put("frame", "close", frame(5, reason))
put("frame", "data", frame(0x10, b"ping"))
put("frame", "stream", frame(1, hello) + frame(0x10, b"") + frame(0x10, b"pong") + frame(5, reason))
put("frame", "too-large", struct.pack(">IB", 131073, 1))

# hello_reauth: bodies; reauth with real certificates made by openssl.
put("hello_reauth", "hello", hello)
put("hello_reauth", "hello-no-chain", json.dumps({"proof": proof_case["input"]["proof"]["compact"]}))
put("hello_reauth", "accept", accept)
put("hello_reauth", "reason", reason)

tmp = tempfile.mkdtemp()
def openssl(*args):
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

def der(path):
    with open(os.path.join(tmp, path), "rb") as f:
        return f.read()

uri = "spiffe://example.org/agent/planner/task/t1"
with open(os.path.join(tmp, "ca.cnf"), "w") as f:
    f.write("[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
            "[v3_int]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature\n"
            "[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:" + uri + "\n")
openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=root", "-days", "2", "-extensions", "v3_ca", "-config", "ca.cnf", "-outform", "DER", "-out", "ca.der")
openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "int.key")
openssl("req", "-new", "-key", "int.key", "-subj", "/CN=int", "-out", "int.csr")
openssl("x509", "-req", "-in", "int.csr", "-CA", "ca.der", "-CAform", "DER", "-CAkey", "ca.key", "-days", "2", "-extfile", "ca.cnf", "-extensions", "v3_int", "-outform", "DER", "-out", "int.der")
openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key")
openssl("req", "-new", "-key", "leaf.key", "-subj", "/", "-addext", "subjectAltName=URI:" + uri, "-outform", "DER", "-out", "leaf.csr.der")
openssl("req", "-new", "-key", "leaf.key", "-subj", "/", "-addext", "subjectAltName=URI:" + uri, "-out", "leaf.csr.pem")
openssl("x509", "-req", "-in", "leaf.csr.pem", "-CA", "ca.der", "-CAform", "DER", "-CAkey", "ca.key", "-days", "1", "-extfile", "ca.cnf", "-extensions", "leaf", "-outform", "DER", "-out", "leaf.der")
openssl("x509", "-req", "-in", "leaf.csr.pem", "-CA", "int.der", "-CAform", "DER", "-CAkey", "int.key", "-days", "1", "-extfile", "ca.cnf", "-extensions", "leaf", "-outform", "DER", "-out", "leaf-via-int.der")
put("hello_reauth", "reauth", json.dumps({"certs": [b64e(der("leaf.der")), b64e(der("ca.der"))], "proof": proof_case["input"]["proof"]["compact"]}))
put("hello_reauth", "reauth-int-no-keycertsign", json.dumps({"certs": [b64e(der("leaf-via-int.der")), b64e(der("int.der")), b64e(der("ca.der"))], "proof": "a.b.c"}))
put("frame", "reauth", frame(4, json.dumps({"certs": [b64e(der("leaf.der"))], "proof": "a.b.c"}).encode()))

# csr: P-256 and Ed25519 requests, DER and PEM, matching and foreign SANs.
put("csr", "p256-der", der("leaf.csr.der"))
put("csr", "p256-pem", der("leaf.csr.pem"))
openssl("genpkey", "-algorithm", "ed25519", "-out", "ed.key")
openssl("req", "-new", "-key", "ed.key", "-subj", "/", "-addext", "subjectAltName=URI:" + uri, "-outform", "DER", "-out", "ed.csr.der")
put("csr", "ed25519-der", der("ed.csr.der"))
openssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=x", "-addext", "subjectAltName=URI:spiffe://other.org/agent/x/task/y,DNS:a.example", "-addext", "basicConstraints=critical,CA:TRUE", "-outform", "DER", "-out", "bad.csr.der")
put("csr", "foreign-san-ca", der("bad.csr.der"))

# trust_bundle: the vectors' bundles.
seen = set()
for c in valid + [c for n in negative.values() for c in n]:
    for td, b in c["input"]["bundles"].items():
        s = json.dumps(b, sort_keys=True)
        if s not in seen:
            seen.add(s)
            if len(seen) <= 6:
                put("trust_bundle", "bundle-%s-%d" % (td, len(seen)), s)

# revocation_list: compact lists (flag 0) and decoded header/payload pairs (flag 1).
lists = []
for c in valid + negative["revocation"]:
    for l in c["input"].get("revocation_lists") or []:
        if l not in lists:
            lists.append(l)
for i, l in enumerate(lists[:6]):
    put("revocation_list", "compact-%d" % i, b"\0" + l.encode())
    h, p, _ = l.split(".")
    put("revocation_list", "resign-%d" % i, b"\1" + b64d(h) + b"\0" + b64d(p))

# policy: the test policies.
put("policy", "ca-tests", """[defaults]
ttl = "5m"
max_ttl = "15m"
task_ttl = "1h"
max_task_ttl = "8h"

[agents.planner]
scopes = ["tickets:*", "search:query"]
max_ttl = "10m"
max_depth = 2
requesters = ["operator", "bootstrap"]

[agents.summarizer]
scopes = ["tickets:read"]
requesters = ["parent:planner"]

[services.search]
max_ttl = "1h"
requesters = ["operator"]
""")
put("policy", "minimal", "[agents.planner]\nscopes = [\"files:read\"]\nrequesters = [\"operator\"]\n")
put("policy", "empty", "")

# ed25519_diff: published keys, small-order and non-canonical encodings.
keys = json.load(open(os.path.join(ROOT, "spec", "vectors", "keys.json")))["keys"]
eds = [b64d(k["jwk"]["x"]) for k in keys.values() if k["alg"] == "Ed25519"]
p = 2**255 - 19
def le(n):
    return n.to_bytes(32, "little")
special = [le(0), le(1), le(p - 1), le(p), le(p + 1), bytes([0xff] * 32), le(1)[:31] + b"\x80",
           bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
           bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")]
put("ed25519_diff", "published-keys", b"".join(eds))
put("ed25519_diff", "small-order-and-edges", b"".join(special[:8]))
put("ed25519_diff", "mixed", special[7] + eds[0] + special[8] + eds[-1])
# signed_bundle: byte 0 bit 0 set, then `header NUL payload` (re-signed by the harness with the
# bundle-signing test key); clear, then a compact document.
now = valid[0]["input"]["now"]
for td in ["example.org", "partner.example"]:
    bundle = next(c["input"]["bundles"][td] for c in valid if td in c["input"]["bundles"])
    bundle = dict(bundle, spiffe_sequence=3)
    claims = {"iss": "spiffe://" + td, "seq": 3, "iat": now - 10, "bundle": bundle}
    header = {"alg": "ES256", "typ": "agentid-bundle+jwt"}
    put("signed_bundle", "signed-" + td,
        b"\x01" + json.dumps(header).encode() + b"\0" + json.dumps(claims).encode())
put("signed_bundle", "signed-extra-header-member", b"\x01" + json.dumps(
    {"alg": "ES256", "typ": "agentid-bundle+jwt", "kid": "x"}).encode() + b"\0" + json.dumps(
    {"iss": "spiffe://example.org", "seq": 1, "iat": now, "bundle": {"keys": []}}).encode())
put("signed_bundle", "compact-unsigned", b"\x00" + (b64e(b'{"alg":"ES256","typ":"agentid-bundle+jwt"}')
    + "." + b64e(b'{"iss":"spiffe://example.org","seq":1,"iat":0,"bundle":{"keys":[]}}') + ".AAAA").encode())

# http_presentation: requests separated by NUL, header lines by newline; the harness's
# verification succeeds when the proof's first byte is even ('B'), fails when odd ('C').
chain = valid[0]["input"]["chain"]
def req(*lines):
    return "\n".join(lines).encode()
put("http_presentation", "verified-then-reused-then-changed", b"\0".join([
    req("agentid-chain: " + chain, "agentid-proof: Bproof"), req("accept: */*"),
    req("agentid-chain: " + chain, "agentid-proof: Bproof"), req("agentid-proof: Bother")]))
put("http_presentation", "identity-only-then-failed", b"\0".join([
    req("accept: */*"), req("agentid-proof: Cproof"), req("agentid-proof: Cproof"), req("")]))
put("http_presentation", "header-refusals", b"\0".join([
    req("agentid-chain: " + chain), req("agentid-proof: a", "agentid-proof: a"),
    req("agentid-proof: not~token"), req("agentid-proof: Bproof")]))
# ca_request: byte 0 picks the route's body (0 enroll, 1 tokens, 2 tasks, 3 children, 4 renew,
# 5 revoke), the rest is the body.
csr_b64 = b64e(der("leaf.csr.der"))
put("ca_request", "enroll", b"\0" + json.dumps({"token": "agentid-bt1.x", "csr": csr_b64}).encode())
put("ca_request", "tokens-principal", b"\1" + json.dumps({
    "agent": "planner", "task": "t1", "scope": ["tickets:read", "search:*"],
    "audience": ["spiffe://example.org/svc/search"], "max_depth": 2, "ttl_secs": 300,
    "principal": {"format": "email", "email": "a@example.org", "z": [1, 2.5, {"b": None, "a": True}]},
    "may_delegate_to": ["spiffe://example.org/agent/summarizer"], "limits": {"calls": 10},
    "expires_in_secs": 600}).encode())
put("ca_request", "tasks", b"\2" + json.dumps({"csr": b64e(der("ed.csr.der")), "agent": "planner", "scope": ["files:read"]}).encode())
put("ca_request", "children", b"\3" + json.dumps({"agent": "summarizer", "csr": csr_b64, "ttl_secs": 60, "parent_chain": chain}).encode())
put("ca_request", "renew", b"\4" + json.dumps({"identity": uri, "ttl_secs": 60}).encode())
put("ca_request", "revoke", b"\5" + json.dumps({"task": "t1", "reason": "compromised"}).encode())
put("ca_request", "revoke-array", b"\5" + b'["t1"]')
put("ca_request", "enroll-duplicate-member", b'\0{"token":"a","token":"b","csr":"AA"}')
# audit_export: byte 0 bit 0 clear, then an export file (or a report) as is; set, then a
# script of operations (see agentid_fuzz::audit_export: 0-2 a record of writer op>>3, 3 a
# checkpoint, 4 a base, 5 a blank line (0xfd half a MiB of spaces), 6 LF/CRLF, 7 a splice);
# bit 1 set ends the last line, bit 2 allows 0xfd.
import hashlib
def record_line(writer, seq, prev):
    body = json.dumps({"writer": writer, "seq": seq, "prev": prev, "ts": 1700000000 + seq,
                       "kind": "issue.task", "actor": "operator", "subject": None, "task": None,
                       "serial": "%x" % seq, "jti": None, "outcome": "ok", "reason": None},
                      separators=(",", ":"))
    h = hashlib.sha256(b"agentid-audit-record-v1\n" + body.encode()).hexdigest()
    line = dict(json.loads(body), type="record", body=body, hash=h)
    return json.dumps(line, separators=(",", ":")), h

def export(plan, crlf=False):
    prev, out = {}, []
    for w, seq in plan:
        if seq is None:
            out.append(json.dumps({"type": "checkpoint", "writer": w, "seq": 1, "jws": "a.b.c"}))
            continue
        line, prev[w] = record_line(w, seq, prev.get(w, "0" * 64))
        out.append(line)
    return ("\r\n" if crlf else "\n").join(out) + "\n"

put("audit_export", "file-interleaved",
    b"\0" + export([("main", 1), ("ca-2", 1), ("main", 2), ("ca-2", 2), ("main", None), ("main", 3)]).encode())
put("audit_export", "file-crlf-blank",
    b"\0" + export([("main", 1), ("main", 2), ("main", None), ("main", 3)], crlf=True).replace("\r\n", "\r\n\r\n", 1).encode())
put("audit_export", "file-out-of-order",
    b"\0" + export([("main", 2), ("main", 1)]).encode())
line, h = record_line("main", 3, "0" * 64)
put("audit_export", "report", b"\0" + json.dumps(
    {"valid": True, "report": {"chains": [{"writer": "main", "records": 3, "head": h}]}}).encode())
# Scripts: writers main (0x00), ca-2 (0x08), an escaped one (0x10), "" (0x18).
put("audit_export", "script-interleaved", bytes([3, 0x00, 0x08, 0x00, 0x08, 0x03, 0x05, 0x06,
    0x00, 0x10, 0x08, 0x0c, 0x0d, 0x18, 0x00, 0x15, 0x10]))
put("audit_export", "script-padded-runs", bytes([7, 0x00, 0x08, 0x00, 0xfd, 0x08, 0xfd, 0x00, 0x08,
    0x00]))
# A checkpoint line with a `"body":1` member spliced in (ignored by the first reading; the
# second once took the file for changed).
put("audit_export", "script-checkpoint-body-member", bytes([3, 0x00, 0x03, 0x07, 9, 1,
    *b'"body":1,', 0x00]))
shutil.rmtree(tmp)
print("corpus written to", CORPUS)
