//! `bundle export --format spiffe` writes a bundle that SPIRE accepts, checked two ways:
//!
//! - a Rust port of SPIRE's bundle parser: `unmarshal` in `pkg/common/bundleutil/unmarshal.go`
//!   and `types.go` of spiffe/spire at commit ef8527ec91013c6c1b4741e0f6ac0786576e620e
//!   (2026-08-22, `git describe`: v1.2.0-3020-gef8527ec9), with the JWK rules of go-jose v4's
//!   `JSONWebKey.UnmarshalJSON` that the decode into `jose.JSONWebKeySet` applies first;
//! - py-spiffe (`pip install spiffe`) reading the exported file (tests/interop/py_spiffe_bundle.py),
//!   skipped with a printed reason only when python3 or the package is missing and `CI` is unset.
//!
//! The agentid bundle (`--format agentid`, grant and revocation keys) is what SPIRE refuses:
//! the port must refuse it for the reason SPIRE gives.
#![cfg(test)]

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::{Map, Value};
use support::Env;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What SPIRE keeps of a bundle.
#[derive(Debug)]
struct SpireBundle {
    x509_authorities: Vec<Vec<u8>>,
    jwt_authorities: Vec<String>,
    sequence: u64,
    refresh_hint: i64,
}

/// `bundleutil.Unmarshal(trustDomain, data)`: JSON into `bundleDoc` (go-jose's JWK Set plus
/// `spiffe_sequence` uint64 and `spiffe_refresh_hint` int), then one rule per `use`.
fn spire_unmarshal(doc: &[u8]) -> Result<SpireBundle, String> {
    let doc: Value = serde_json::from_slice(doc).map_err(|e| format!("json: {e}"))?;
    let doc = doc
        .as_object()
        .ok_or("json: cannot unmarshal into bundleDoc")?;
    // encoding/json: a number into uint64 / int must be an integer in range; absent is zero.
    let sequence = match doc.get("spiffe_sequence") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().ok_or("json: spiffe_sequence is not a uint64")?,
    };
    let refresh_hint = match doc.get("spiffe_refresh_hint") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or("json: spiffe_refresh_hint is not an int")?,
    };
    let keys = match doc.get("keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err("json: keys is not an array".into()),
    };
    let mut out = SpireBundle {
        x509_authorities: Vec::new(),
        jwt_authorities: Vec::new(),
        sequence,
        refresh_hint,
    };
    for (i, key) in keys.iter().enumerate() {
        let key = key.as_object().ok_or("json: a key is not an object")?;
        let jwk = go_jose_jwk(key)?;
        match jwk.use_.as_str() {
            "x509-svid" => {
                if jwk.certificates.len() != 1 {
                    return Err(format!(
                        "expected a single certificate in x509-svid entry {i}; got {}",
                        jwk.certificates.len()
                    ));
                }
                out.x509_authorities.push(jwk.certificates[0].clone());
            }
            u @ ("jwt-svid" | "wit-svid") => {
                if jwk.kid.is_empty() {
                    return Err(format!("missing key ID in {u} entry {i}"));
                }
                out.jwt_authorities.push(jwk.kid);
            }
            "" => return Err(format!("missing use for key entry {i}")),
            u => return Err(format!("unrecognized use {u:?} for key entry {i}")),
        }
    }
    Ok(out)
}

/// The members of a go-jose `JSONWebKey` that SPIRE reads.
struct GoJoseJwk {
    use_: String,
    kid: String,
    certificates: Vec<Vec<u8>>,
}

/// go-jose v4 `JSONWebKey.UnmarshalJSON` for public keys: `kty` EC (here P-256: `x` and `y` of
/// 32 bytes, on the curve) or OKP (Ed25519: `x` of 32 bytes); `x5c` entries are standard
/// base64 DER certificates, and when present the first one's key must be the JWK's key.
fn go_jose_jwk(key: &Map<String, Value>) -> Result<GoJoseJwk, String> {
    let s = |k: &str| key.get(k).and_then(Value::as_str).unwrap_or_default();
    let b64url = |k: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s(k))
            .map_err(|e| format!("go-jose: {k}: {e}"))
    };
    let raw_key = match s("kty") {
        "EC" => {
            if s("crv") != "P-256" {
                return Err(format!("port covers P-256 only, got crv {:?}", s("crv")));
            }
            let (x, y) = (b64url("x")?, b64url("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("go-jose: invalid EC public key, wrong length for x/y".into());
            }
            let point = [&[4u8][..], &x, &y].concat();
            // go-jose checks `curve.IsOnCurve(x, y)`; aws-lc does the same here.
            agentid_protocol::PublicKey::from_p256_uncompressed(&point)
                .map_err(|_| "go-jose: invalid EC key, point not on curve".to_owned())?;
            point
        }
        "OKP" => {
            if s("crv") != "Ed25519" {
                return Err(format!("go-jose: unknown curve {:?}", s("crv")));
            }
            let x = b64url("x")?;
            if x.len() != 32 {
                return Err("go-jose: invalid Ed25519 public key".into());
            }
            x
        }
        other => return Err(format!("go-jose: unknown json web key type '{other}'")),
    };
    let mut certificates = Vec::new();
    if let Some(x5c) = key.get("x5c") {
        let list = x5c.as_array().ok_or("go-jose: x5c is not an array")?;
        for c in list {
            let der = base64::engine::general_purpose::STANDARD
                .decode(c.as_str().ok_or("go-jose: x5c entry is not a string")?)
                .map_err(|e| format!("go-jose: x5c: {e}"))?;
            X509Certificate::from_der(&der).map_err(|e| format!("x509: {e}"))?;
            certificates.push(der);
        }
    }
    if let Some(first) = certificates.first() {
        let (_, cert) = X509Certificate::from_der(first).map_err(|e| format!("x509: {e}"))?;
        let cert_key: &[u8] = cert
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .as_ref();
        if cert_key != raw_key.as_slice() {
            return Err("go-jose: invalid JWK, public keys mismatch".into());
        }
    }
    Ok(GoJoseJwk {
        use_: s("use").to_owned(),
        kid: s("kid").to_owned(),
        certificates,
    })
}

/// The root certificate (DER) of the CA in `env`.
fn root_der(env: &Env) -> Vec<u8> {
    let pem = env.read("root.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn the_spiffe_bundle_passes_spires_parser_and_the_agentid_bundle_does_not() {
    for key_type in ["p256", "ed25519"] {
        let env = Env::with_key_type(key_type);
        let out = env.ok("bundle export --ca ca --format spiffe --out spiffe.json");
        assert!(out.starts_with("wrote the SPIFFE bundle"), "{out}");
        env.ok("bundle export --ca ca --format pem --out root.pem");
        let b = spire_unmarshal(env.read("spiffe.json").as_bytes())
            .unwrap_or_else(|e| panic!("{key_type}: SPIRE refuses the spiffe bundle: {e}"));
        assert_eq!(b.x509_authorities, vec![root_der(&env)], "{key_type}");
        assert!(b.jwt_authorities.is_empty());
        assert!(b.sequence > 0 && b.refresh_hint > 0, "{b:?}");
        // The signed bundle's sequence (CA-API 3.2), as the agentid bundle file carries it:
        // a SPIFFE federation consumer sees a new document when the operator signs one.
        let agentid: Value = serde_json::from_str(&env.ok("bundle export --ca ca")).unwrap();
        assert!(b.sequence > 1, "{b:?}");
        assert_eq!(
            Some(b.sequence),
            agentid["spiffe_sequence"].as_u64(),
            "{b:?}"
        );
        // Only the standard use, nothing of agentid's.
        let doc: Value = serde_json::from_str(&env.read("spiffe.json")).unwrap();
        for k in doc["keys"].as_array().unwrap() {
            assert_eq!(k["use"], "x509-svid", "{k}");
        }

        // The agentid bundle (the default) carries the grant and revocation keys: SPIRE says no.
        env.ok("bundle export --ca ca --out agentid.json");
        assert_eq!(
            env.ok("bundle export --ca ca --format agentid"),
            env.read("agentid.json")
        );
        let e = spire_unmarshal(env.read("agentid.json").as_bytes()).unwrap_err();
        assert_eq!(e, "unrecognized use \"agentid-grant\" for key entry 1");
        // ...while agentid's own verifiers need exactly those keys.
        env.planner("p");
        env.ok("revocations export --ca ca --out rev.jwt");
        env.ok("chain verify p/grant.jwt --bundle example.org=agentid.json --peer-cert p/cert.pem --revocations rev.jwt");
    }
}

#[test]
fn the_port_refuses_what_spire_refuses() {
    let env = Env::new();
    env.ok("bundle export --ca ca --format spiffe --out s.json");
    let good: Value = serde_json::from_str(&env.read("s.json")).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        spire_unmarshal(v.to_string().as_bytes())
    };
    assert!(with(&|_| {}).is_ok());
    assert_eq!(
        with(&|v| {
            v["keys"][0].as_object_mut().unwrap().remove("use");
        })
        .unwrap_err(),
        "missing use for key entry 0"
    );
    assert!(with(&|v| {
        let c = v["keys"][0]["x5c"][0].clone();
        v["keys"][0]["x5c"] = Value::Array(vec![c.clone(), c]);
    })
    .unwrap_err()
    .starts_with("expected a single certificate"));
    assert_eq!(
        with(&|v| v["keys"][0]["use"] = "jwt-svid".into()).unwrap_err(),
        "missing key ID in jwt-svid entry 0"
    );
    assert!(with(&|v| v["keys"][0]["x"] = v["keys"][0]["y"].clone())
        .unwrap_err()
        .starts_with("go-jose"));
    assert!(with(&|v| v["spiffe_sequence"] = (-1).into()).is_err());
}

/// py-spiffe on the exported file, or a printed reason to skip (never silently in CI).
#[test]
fn py_spiffe_reads_the_spiffe_bundle() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/py_spiffe_bundle.py");
    let probe = Command::new("python3")
        .args(["-c", "import spiffe, jwt, cryptography"])
        .output();
    let available = matches!(&probe, Ok(o) if o.status.success());
    if !available {
        let why = match &probe {
            Err(e) => format!("python3: {e}"),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install python3 and py-spiffe (pip3 install spiffe): {why}"
        );
        println!("SKIPPED py_spiffe_reads_the_spiffe_bundle: {why} (pip3 install spiffe)");
        return;
    }
    for key_type in ["p256", "ed25519"] {
        let env = Env::with_key_type(key_type);
        env.ok("bundle export --ca ca --format spiffe --out spiffe.json");
        env.ok("bundle export --ca ca --out agentid.json");
        env.ok("bundle export --ca ca --format pem --out root.pem");
        let run = |bundle: &str| {
            Command::new("python3")
                .arg(&script)
                .args(["example.org", bundle, "root.pem"])
                .current_dir(env.dir.path())
                .output()
                .unwrap()
        };
        let ok = run("spiffe.json");
        assert!(
            ok.status.success(),
            "{key_type}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ok 1");
        let refused = run("agentid.json");
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("unrecognized use 'agentid-grant'")
        );
    }
}
