//! Runs spec/vectors/http.json (spec/PROTOCOL.md section 22.9) against the reference
//! implementation: header syntax, presentation state transitions, refusal statuses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use agentid_protocol::{Error, ErrorCode};
use agentid_transport::http::{
    parse_presentation, Dispatch, Presentation, PresentationMachine, PresentationState, Refusal,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/vectors/http.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A header value: a string (its UTF-8 bytes) or `{"repeat": s, "count": n}`.
fn value(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) => o["repeat"]
            .as_str()
            .unwrap()
            .repeat(usize::try_from(o["count"].as_u64().unwrap()).unwrap())
            .into_bytes(),
        other => panic!("bad value {other}"),
    }
}

fn text(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| String::from_utf8(value(v)).unwrap())
}

fn presentation(v: &Value) -> Presentation {
    Presentation {
        chain: text(&v["chain"]),
        proof: text(&v["proof"]).unwrap(),
    }
}

fn refusal_json(r: &Refusal) -> Value {
    serde_json::json!({
        "refusal": {
            "code": r.code(),
            "status": r.status().as_u16(),
            "www_authenticate": r.challenge().map(|c| c.to_str().unwrap().to_owned()),
        }
    })
}

/// The refusal a vector names, made the way the server makes it for that code.
fn refusal_from(v: &Value) -> Refusal {
    let code = v["refusal"]["code"].as_str().unwrap();
    let status = v["refusal"]["status"].as_u64().unwrap();
    match (ErrorCode::from_code(code), status) {
        (Some(c), 401) => Refusal::from_protocol(&Error::new(c, "vector")),
        (Some(c), 403) => Refusal::forbidden(c.as_str(), "vector"),
        _ => panic!("no refusal for {v}"),
    }
}

fn state_name(s: PresentationState) -> &'static str {
    match s {
        PresentationState::None => "none",
        PresentationState::Pending => "pending",
        PresentationState::Verified => "verified",
        PresentationState::Failed => "failed",
    }
}

#[test]
fn header_syntax_vectors() {
    let doc = load();
    let cases = doc["header_cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in cases {
        let mut headers = HeaderMap::new();
        for pair in case["headers"].as_array().unwrap() {
            headers.append(
                HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap(),
                HeaderValue::from_bytes(&value(&pair[1])).unwrap(),
            );
        }
        let got = match parse_presentation(&headers) {
            Ok(None) => serde_json::json!({ "presentation": null }),
            Ok(Some(p)) => {
                serde_json::json!({ "presentation": { "chain": p.chain, "proof": p.proof } })
            }
            Err(r) => refusal_json(&r),
        };
        let mut expected = case["expected"].clone();
        if let Some(p) = expected.get_mut("presentation").filter(|p| !p.is_null()) {
            *p = serde_json::json!({ "chain": text(&p["chain"]), "proof": text(&p["proof"]) });
        }
        if got != expected {
            failures.push(format!("{}: got {got}, expected {expected}", case["id"]));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn state_machine_vectors() {
    let doc = load();
    let named = &doc["presentations"];
    let cases = doc["state_cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut failures = Vec::new();
    for case in cases {
        let mut m: PresentationMachine<()> = PresentationMachine::new();
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let got = if let Some(r) = step.get("request") {
                let p = r.as_str().map(|name| presentation(&named[name]));
                match m.dispatch(p.as_ref()) {
                    Dispatch::IdentityOnly => Value::from("identity_only"),
                    Dispatch::Verify => Value::from("verify"),
                    Dispatch::Hit(_) => Value::from("hit"),
                    Dispatch::Wait => Value::from("wait"),
                    Dispatch::Refuse(r) => refusal_json(&r),
                }
            } else if let Some(v) = step.get("verdict") {
                let result = if v == "ok" {
                    Ok(())
                } else {
                    Err(refusal_from(v))
                };
                match m.complete(result) {
                    Ok(_) => Value::from("served"),
                    Err(r) => refusal_json(&r),
                }
            } else if let Some(v) = step.get("fail") {
                m.fail(refusal_from(v));
                Value::Null
            } else {
                panic!("unknown step {step}");
            };
            if step.get("expected").is_some_and(|e| *e != got) {
                failures.push(format!(
                    "{} step {i}: got {got}, expected {}",
                    case["id"], step["expected"]
                ));
            }
            if step["state"] != state_name(m.state()) {
                failures.push(format!(
                    "{} step {i}: state {:?}, expected {}",
                    case["id"],
                    m.state(),
                    step["state"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn refusal_statuses_and_bodies() {
    let doc = load();
    for entry in doc["codes"].as_array().unwrap() {
        let code = entry["code"].as_str().unwrap();
        let status = entry["status"].as_u64().unwrap();
        let r = match entry["origin"].as_str().unwrap() {
            "header_syntax" => continue, // made by parse_presentation: header_syntax_vectors
            "presentation" | "deadline" => {
                let c = agentid_transport::http::PRESENTATION_CHANGED;
                let c = if code == c {
                    c
                } else {
                    agentid_transport::http::CREDENTIAL_EXPIRED
                };
                assert_eq!(c, code);
                Refusal::unauthenticated(c, "vector")
            }
            "verification" => {
                Refusal::from_protocol(&Error::new(ErrorCode::from_code(code).unwrap(), "vector"))
            }
            "authorization" if code == agentid_transport::http::PEER_DENIED => {
                Refusal::forbidden(agentid_transport::http::PEER_DENIED, "vector")
            }
            "authorization" => {
                Refusal::forbidden(ErrorCode::from_code(code).unwrap().as_str(), "vector")
            }
            other => panic!("unknown origin {other}"),
        };
        assert_eq!(u64::from(r.status().as_u16()), status, "{code}");
        assert_eq!(
            r.challenge().map(|c| c.to_str().unwrap().to_owned()),
            entry["www_authenticate"].as_str().map(str::to_owned),
            "{code}"
        );
        let resp: http::Response<bytes::Bytes> = r.to_response();
        let body: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body["code"], code);
        assert_eq!(
            body.as_object().unwrap().len(),
            2,
            "exactly code and message"
        );
        assert!(
            !body["message"].as_str().unwrap().contains("vector"),
            "details stay local"
        );
        assert_eq!(resp.headers()["content-type"], "application/json");
    }
}
