//! The client hub: the outbox of every connected client, fan-out of event lines, and the rules
//! for letting clients go. A client that cannot take a line (its outbox is full because it
//! does not read, or its writer is gone) is dropped at once; a client that closed its end is
//! kept until the controller says nothing it asked for is outstanding.

use std::collections::HashMap;
use std::sync::mpsc::{SyncSender, TrySendError};

use super::ClientId;

struct Client {
    outbox: SyncSender<String>,
    /// The client closed its end; drop it once its requests are answered.
    closing: bool,
}

/// The connected clients.
#[derive(Default)]
pub struct ClientHub {
    clients: HashMap<ClientId, Client>,
}

impl ClientHub {
    /// Adds a client whose lines go to `outbox`.
    pub fn connect(&mut self, client: ClientId, outbox: SyncSender<String>) {
        self.clients.insert(client, Client { outbox, closing: false });
    }

    /// Marks a client as closing (its end of the socket is gone).
    pub fn closing(&mut self, client: ClientId) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.closing = true;
        }
    }

    /// Whether `client` closed its end and is kept only for its answers.
    pub fn is_closing(&self, client: ClientId) -> bool {
        self.clients.get(&client).is_some_and(|c| c.closing)
    }

    /// Whether `client` is connected.
    pub fn contains(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }

    /// Queues `line` for `client`. False when the client is gone, or was dropped now because
    /// it is too slow.
    pub fn send(&mut self, client: ClientId, line: String) -> bool {
        let Some(c) = self.clients.get(&client) else { return false };
        match c.outbox.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!("control client {} is not reading; disconnecting it", client.0);
                self.remove(client);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.remove(client);
                false
            }
        }
    }

    /// Queues `line` for every client; returns the clients dropped on the way.
    pub fn broadcast(&mut self, line: &str) -> Vec<ClientId> {
        let clients: Vec<ClientId> = self.clients.keys().copied().collect();
        clients.into_iter().filter(|&client| !self.send(client, line.to_owned())).collect()
    }

    /// Drops a client.
    pub fn remove(&mut self, client: ClientId) {
        self.clients.remove(&client);
    }

    /// Drops every client: each writer sends what is queued and closes.
    pub fn clear(&mut self) {
        self.clients.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn slow_clients_are_dropped_and_closing_ones_kept() {
        let mut hub = ClientHub::default();
        let (outbox, slow) = sync_channel(1);
        hub.connect(ClientId(2), outbox);
        let (outbox, fast) = sync_channel(8);
        hub.connect(ClientId(3), outbox);
        assert!(hub.broadcast("paused\n").is_empty());
        assert_eq!(hub.broadcast("resumed\n"), [ClientId(2)]);
        assert!(!hub.contains(ClientId(2)), "a full outbox drops the client");
        assert_eq!(slow.try_iter().count(), 1);
        assert_eq!(fast.try_iter().count(), 2);
        hub.closing(ClientId(3));
        assert!(hub.is_closing(ClientId(3)) && hub.contains(ClientId(3)));
        drop(fast);
        assert!(!hub.send(ClientId(3), "x\n".into()), "a writer that is gone drops the client");
        assert!(!hub.contains(ClientId(3)));
    }
}
