//! The connections agents made to this coordinator, by node name. Agents
//! listen on nothing, so what the cluster asks of an agent (an allocation's
//! logs) goes down the connection the agent opened. Agents keep theirs to
//! the leader, so the leader normally holds every node's link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct AgentLinks(Arc<Mutex<HashMap<String, quinn::Connection>>>);

impl AgentLinks {
    /// Records `conn` as `node`'s link until the returned guard drops.
    pub fn register(&self, node: &str, conn: quinn::Connection) -> LinkGuard {
        let id = conn.stable_id();
        self.lock().insert(node.to_string(), conn);
        LinkGuard { links: self.clone(), node: node.to_string(), id }
    }

    /// `node`'s link, while it is open.
    pub fn get(&self, node: &str) -> Option<quinn::Connection> {
        self.lock().get(node).filter(|c| c.close_reason().is_none()).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the link it registered when dropped, unless the agent has a newer
/// one by then (a reconnect registers before the old connection ends).
pub struct LinkGuard {
    links: AgentLinks,
    node: String,
    id: usize,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let mut links = self.links.lock();
        if links.get(&self.node).is_some_and(|c| c.stable_id() == self.id) {
            links.remove(&self.node);
        }
    }
}
