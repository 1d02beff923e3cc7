//! A decision sink for tests: it records every decision the server reports (spec/PROTOCOL.md
//! 22.8) as (resource, granted, code). Included by path from the HTTP, gRPC and MCP tests.

use std::sync::Mutex;

use agentid_transport::http::{Decision, DecisionSink};

/// Every decision the server's sink received, in order: (resource, granted, code).
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<(String, bool, Option<&'static str>)>>);

impl DecisionSink for Recorder {
    fn record(&self, d: &Decision<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((d.resource.to_string(), d.granted, d.code));
    }
}
