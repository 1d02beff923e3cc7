"""Reads a SPIFFE bundle file (`agentid bundle export --format spiffe`) with py-spiffe.

Usage: python3 py_spiffe_bundle.py TRUST_DOMAIN BUNDLE_JSON ROOT_PEM

py-spiffe (0.3.x) has no reader for the JSON SPIFFE bundle format itself: it reads X.509
bundles from DER or PEM (`X509Bundle.parse_raw`, `X509Bundle.parse`) and JWT bundles from a
JWK Set (`JwtBundle.parse`, which needs a `kid` on every key). So this script reads the document
as the SPIFFE Trust Domain and Bundle specification lays it out and hands each part to
py-spiffe's own parser:
- every `use` is a standard one (`x509-svid`, `jwt-svid`);
- each `x509-svid` entry has exactly one `x5c` certificate, which `X509Bundle.parse_raw`
  accepts for the trust domain, whose public key is the entry's JWK (read with PyJWK, the
  parser py-spiffe's `JwtBundle` uses), and which is the root in ROOT_PEM (`X509Bundle.parse`);
- the `jwt-svid` entries, if any, form a JWK Set that `JwtBundle.parse` accepts.
Prints `ok N` (the number of X.509 authorities) or exits non-zero with the reason.
"""

import base64
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from jwt import PyJWK
from spiffe import JwtBundle, TrustDomain, X509Bundle

STANDARD_USES = {"x509-svid", "jwt-svid"}


def spki(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def main():
    td_name, bundle_path, root_path = sys.argv[1:4]
    td = TrustDomain(td_name)
    with open(bundle_path, "rb") as f:
        doc = json.loads(f.read())
    keys = doc.get("keys")
    if not isinstance(keys, list):
        sys.exit("no keys array")
    for k in ("spiffe_sequence", "spiffe_refresh_hint"):
        if k in doc and not isinstance(doc[k], int):
            sys.exit(f"{k} is not an integer")
    x509 = []
    jwt_keys = []
    for i, key in enumerate(keys):
        use = key.get("use")
        if use not in STANDARD_USES:
            sys.exit(f"unrecognized use {use!r} for key entry {i}")
        if use == "jwt-svid":
            jwt_keys.append(key)
            continue
        x5c = key.get("x5c")
        if not isinstance(x5c, list) or len(x5c) != 1:
            sys.exit(f"expected a single certificate in x509-svid entry {i}")
        der = base64.b64decode(x5c[0], validate=True)
        bundle = X509Bundle.parse_raw(td, der)
        (cert,) = bundle.x509_authorities
        jwk_key = PyJWK({k: v for k, v in key.items() if k not in ("use", "x5c")}).key
        if spki(jwk_key) != spki(cert.public_key()):
            sys.exit(f"x509-svid entry {i}: the JWK is not the certificate's key")
        x509.append(cert)
    if jwt_keys:
        JwtBundle.parse(td, json.dumps({"keys": jwt_keys}).encode())
    with open(root_path, "rb") as f:
        roots = X509Bundle.parse(td, f.read()).x509_authorities
    sha256 = hashes.SHA256()
    if {c.fingerprint(sha256) for c in roots} != {c.fingerprint(sha256) for c in x509}:
        sys.exit("the bundle's X.509 authorities are not the CA's roots")
    print(f"ok {len(x509)}")


if __name__ == "__main__":
    main()
