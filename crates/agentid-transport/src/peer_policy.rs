//! Peer policy: which authenticated peer identities a client or server admits.
//!
//! Every client and server needs one; there is no default. The only permissive policy is
//! [`PeerPolicy::danger_any`], which still requires a certificate chaining to the anchors of the
//! peer's own trust domain.

use std::fmt;
use std::sync::Arc;

use agentid_protocol::{AgentId, PeerId, ServiceId, TrustDomain};

type Predicate = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

#[derive(Clone)]
enum Rule {
    AgentsIn(TrustDomain),
    Agent(AgentId),
    ServicesIn(TrustDomain),
    Service(ServiceId),
    TrustDomain(TrustDomain),
    Exact(PeerId),
    Fn(&'static str, Predicate),
    Any,
    Or(Box<Rule>, Box<Rule>),
}

impl Rule {
    fn allows(&self, peer: &PeerId) -> bool {
        match self {
            Rule::AgentsIn(td) => matches!(peer, PeerId::Task(t) if t.trust_domain() == *td),
            Rule::Agent(agent) => matches!(peer, PeerId::Task(t) if t.agent() == *agent),
            Rule::ServicesIn(td) => matches!(peer, PeerId::Service(s) if s.trust_domain() == *td),
            Rule::Service(svc) => matches!(peer, PeerId::Service(s) if s == svc),
            Rule::TrustDomain(td) => peer.trust_domain() == *td,
            Rule::Exact(id) => peer == id,
            Rule::Fn(_, f) => f(peer),
            Rule::Any => true,
            Rule::Or(a, b) => a.allows(peer) || b.allows(peer),
        }
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::AgentsIn(td) => write!(f, "agents_in({td})"),
            Rule::Agent(a) => write!(f, "agent({a})"),
            Rule::ServicesIn(td) => write!(f, "services_in({td})"),
            Rule::Service(s) => write!(f, "service({s})"),
            Rule::TrustDomain(td) => write!(f, "trust_domain({td})"),
            Rule::Exact(p) => write!(f, "exact({p})"),
            Rule::Fn(name, _) => write!(f, "fn({name})"),
            Rule::Any => f.write_str("danger_any"),
            Rule::Or(a, b) => write!(f, "{a:?} | {b:?}"),
        }
    }
}

/// Which peers a client or server admits, decided on the peer's parsed identity (never by string
/// prefix).
///
/// ```
/// use agentid_protocol::{AgentId, TrustDomain};
/// use agentid_transport::PeerPolicy;
/// # fn main() -> Result<(), agentid_protocol::Error> {
/// let td = TrustDomain::parse("example.org")?;
/// let policy = PeerPolicy::agent(AgentId::new(&td, "planner")?).or(PeerPolicy::services_in(td));
/// # let _ = policy; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PeerPolicy {
    rule: Rule,
}

impl PeerPolicy {
    /// Task identities of any agent of trust domain `td`.
    pub fn agents_in(td: TrustDomain) -> Self {
        Self {
            rule: Rule::AgentsIn(td),
        }
    }

    /// Task identities of one agent (any of its tasks).
    pub fn agent(agent: AgentId) -> Self {
        Self {
            rule: Rule::Agent(agent),
        }
    }

    /// Any of the given agents.
    pub fn agents(agents: impl IntoIterator<Item = AgentId>) -> Self {
        Self::any_of(agents.into_iter().map(Self::agent))
    }

    /// Service IDs of trust domain `td`.
    pub fn services_in(td: TrustDomain) -> Self {
        Self {
            rule: Rule::ServicesIn(td),
        }
    }

    /// One service.
    pub fn service(service: ServiceId) -> Self {
        Self {
            rule: Rule::Service(service),
        }
    }

    /// Any of the given services.
    pub fn services(services: impl IntoIterator<Item = ServiceId>) -> Self {
        Self::any_of(services.into_iter().map(Self::service))
    }

    /// Any task identity or service ID of trust domain `td`.
    pub fn trust_domain(td: TrustDomain) -> Self {
        Self {
            rule: Rule::TrustDomain(td),
        }
    }

    /// Exactly this peer identity.
    pub fn exact(peer: PeerId) -> Self {
        Self {
            rule: Rule::Exact(peer),
        }
    }

    /// A closure; `name` appears in logs and `Debug`.
    pub fn from_fn(
        name: &'static str,
        f: impl Fn(&PeerId) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            rule: Rule::Fn(name, Arc::new(f)),
        }
    }

    /// Admits every peer whose certificate chains to the anchors of its own trust domain.
    /// Dangerous: any agent or service of any trust domain in the trust store gets in.
    pub fn danger_any() -> Self {
        Self { rule: Rule::Any }
    }

    /// A peer admitted by `self` or by `other`.
    #[must_use]
    pub fn or(self, other: PeerPolicy) -> Self {
        Self {
            rule: Rule::Or(Box::new(self.rule), Box::new(other.rule)),
        }
    }

    /// Whether `peer` is admitted.
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.rule.allows(peer)
    }

    fn any_of(mut it: impl Iterator<Item = PeerPolicy>) -> Self {
        let first = it
            .next()
            .unwrap_or_else(|| Self::from_fn("nobody", |_| false));
        it.fold(first, PeerPolicy::or)
    }
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerPolicy({:?})", self.rule)
    }
}
