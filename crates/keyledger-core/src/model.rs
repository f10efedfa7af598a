//! The state of one key, as folded from its events.

use crate::secret::SecretHash;
use crate::time::Timestamp;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;
use uuid::Uuid;

/// Every field of a key as of its latest event. Holds hashes, never a plaintext secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    pub id: Uuid,
    pub account: String,
    pub name: String,
    pub owner: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<String>,
    pub allowed_ips: Vec<IpNet>,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    pub metadata: Map<String, Value>,
    pub prefix: String,
    pub hint: String,
    pub secret_hash: SecretHash,
    /// The rotated-away secret while its grace period lasts.
    pub previous: Option<PreviousSecret>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub rotated_at: Option<Timestamp>,
    pub deleted_at: Option<Timestamp>,
    /// A `key.expired` event has been recorded for the current `expires_at`.
    pub expired: bool,
    /// Number of events in the key's stream.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret_hash: SecretHash,
    pub until: Timestamp,
}

impl KeyState {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// Expired by the clock, whether or not `key.expired` has been recorded yet.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// An empty allow-list admits every address.
    pub fn allows_ip(&self, ip: Option<IpAddr>) -> bool {
        if self.allowed_ips.is_empty() {
            return true;
        }
        let Some(ip) = ip else { return false };
        let ip = canonical_ip(ip);
        self.allowed_ips.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are compared as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address (as a /32 or /128) or a CIDR network, in [`canonical_net`] form. The one parser
/// for allow-lists and trusted proxies.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    Some(canonical_net(net))
}

/// A network truncated to its prefix, and given as IPv4 when it lies inside `::ffff:0:0/96`,
/// so that it matches what [`canonical_ip`] compares.
pub fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        other => other,
    }
}
