//! The cap on open HTTP connections (`--web.max-connections`) and the register of open connections it works from.
//!
//! Why close the longest-idle connection rather than wait or refuse: a listener that simply stops accepting at
//! the cap (Go's `LimitListener`) leaves Prometheus's next connection in the kernel's backlog behind the idle
//! ones until they time out, and one that accepts and closes everything beyond the cap refuses Prometheus just
//! the same; either way a client holding idle connections starves the scrapes. Closing the connection that has
//! been idle longest admits every new connection at once, and a scraper's connection, which sends its request
//! the moment it connects, is busy (never chosen) by the time the next newcomer arrives. Only connections with no
//! request in progress are chosen, and one that has served a request is closed gracefully (hyper finishes what it
//! is writing), so no answer is ever cut short. When every connection is busy, new ones wait in the backlog
//! until one finishes. Descriptors so stay bounded by the cap plus the one connection being admitted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};

/// How often a full server looks again for a connection to close while the one it chose has not gone yet (it may
/// be finishing a response to a slow reader).
const RECHECK: Duration = Duration::from_secs(1);

/// The least time between two "limit reached" warnings, so a client hovering at the cap cannot flood the log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The open connections, at most `cap` of them.
#[derive(Debug)]
pub(crate) struct Connections {
    cap: usize,
    slots: Arc<Semaphore>,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// Set while the cap is reached, until the count falls back to three quarters of it.
    episode: Option<Episode>,
    last_warning: Option<Instant>,
}

#[derive(Debug)]
struct Episode {
    started: Instant,
    /// Whether this episode's start was logged (not within [`WARN_EVERY`] of the previous warning).
    logged: bool,
    /// Connections closed to admit new ones.
    closed: u64,
    /// Whether "every connection is busy" was logged in this episode.
    all_busy_logged: bool,
}

#[derive(Debug)]
struct Entry {
    /// Requests being answered now (HTTP/1 pipelining aside, 0 or 1).
    in_flight: u32,
    /// Whether a request ever reached the service on this connection.
    served: bool,
    /// When the connection was accepted or last finished a request.
    idle_since: Instant,
    /// Whether the connection was asked to close (chosen to make room, or the server is stopping).
    closing: bool,
    close: Arc<Notify>,
}

impl Connections {
    /// A register admitting at most `cap` connections at once (at least one).
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        let cap = cap.max(1);
        Arc::new(Self { cap, slots: Arc::new(Semaphore::new(cap)), table: Mutex::default() })
    }

    /// A place for a connection just accepted: at once below the cap, otherwise after closing the connection
    /// that has been idle longest (or, when every connection is busy, once one goes).
    pub(crate) async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                return self.register(permit);
            }
            self.close_longest_idle();
            if let Ok(Ok(permit)) = tokio::time::timeout(RECHECK, Arc::clone(&self.slots).acquire_owned()).await {
                return self.register(permit);
            }
        }
    }

    /// Ask every open connection to close: those that never had a request at once, the others once their
    /// answer is written.
    pub(crate) fn close_all(&self) {
        for entry in self.lock().open.values_mut() {
            entry.closing = true;
            entry.close.notify_one();
        }
    }

    /// How many connections are open.
    pub(crate) fn open(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent under a panic elsewhere: every change is a single field write.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let close = Arc::new(Notify::new());
        let mut table = self.lock();
        let id = table.next_id;
        table.next_id += 1;
        let entry = Entry { in_flight: 0, served: false, idle_since: Instant::now(), closing: false, close };
        let close = Arc::clone(&entry.close);
        table.open.insert(id, entry);
        Slot { id, close, connections: Arc::clone(self), _permit: permit }
    }

    /// The cap is reached and a connection waits: start (and log) an episode, and ask the connection idle
    /// longest to close.
    fn close_longest_idle(&self) {
        let mut table = self.lock();
        let now = Instant::now();
        if table.episode.is_none() {
            let logged = table.last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
            if logged {
                table.last_warning = Some(now);
                warn!(
                    limit = self.cap,
                    "connection limit reached: {} connections are open (--web.max-connections); closing the \
                     longest-idle connection for each new one until fewer are open",
                    self.cap
                );
            }
            table.episode = Some(Episode { started: now, logged, closed: 0, all_busy_logged: false });
        }
        let victim = table.open.values_mut().filter(|e| e.in_flight == 0 && !e.closing).min_by_key(|e| e.idle_since);
        let closed = match victim {
            Some(entry) => {
                entry.closing = true;
                entry.close.notify_one();
                true
            }
            None => false,
        };
        let cap = self.cap;
        if let Some(episode) = table.episode.as_mut() {
            if closed {
                episode.closed += 1;
            } else if !episode.all_busy_logged {
                episode.all_busy_logged = true;
                warn!(
                    limit = cap,
                    "all {cap} connections are answering requests; new connections wait until one finishes"
                );
            }
        }
    }

    fn release(&self, id: u64) {
        let mut table = self.lock();
        table.open.remove(&id);
        // Three quarters, not the cap itself: a count hovering at the cap is one episode, not many.
        if table.open.len() <= self.cap * 3 / 4
            && let Some(episode) = table.episode.take()
            && episode.logged
        {
            info!(
                open = table.open.len(),
                closed = episode.closed,
                "connection count back below the limit after {} s; {} idle connections were closed to admit \
                 new ones",
                episode.started.elapsed().as_secs(),
                episode.closed
            );
        }
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.lock().open.get_mut(&id) {
            change(entry);
        }
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    close: Arc<Notify>,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Mark a request as being answered until the returned guard is dropped; a busy connection is never chosen
    /// to make room.
    pub(crate) fn begin_request(self: &Arc<Self>) -> Busy {
        self.connections.update(self.id, |e| {
            e.in_flight += 1;
            e.served = true;
        });
        Busy(Arc::clone(self))
    }

    /// Whether a request ever reached the service on this connection (if not, closing it loses nothing).
    pub(crate) fn served_any(&self) -> bool {
        self.connections.lock().open.get(&self.id).is_some_and(|e| e.served)
    }

    /// Resolves when the connection should close (it was chosen to make room, or the server is stopping).
    pub(crate) async fn close_requested(&self) {
        self.close.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.release(self.id);
    }
}

/// A request in progress on a connection (see [`Slot::begin_request`]).
#[derive(Debug)]
pub(crate) struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.connections.update(self.0.id, |e| {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.idle_since = Instant::now();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn closes(slot: &Slot) -> bool {
        tokio::time::timeout(Duration::from_millis(50), slot.close_requested()).await.is_ok()
    }

    #[tokio::test]
    async fn below_the_cap_connections_are_admitted_and_left_alone() {
        let connections = Connections::new(3);
        let slots = [connections.admit().await, connections.admit().await, connections.admit().await];
        assert_eq!(connections.open(), 3);
        for slot in &slots {
            assert!(!closes(slot).await);
        }
        drop(slots);
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_asked_to_close_not_a_busy_one() {
        let connections = Connections::new(3);
        let oldest = Arc::new(connections.admit().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let middle = Arc::new(connections.admit().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let newest = Arc::new(connections.admit().await);
        // The oldest is answering a request: it is skipped, and the next longest-idle one is chosen.
        let busy = oldest.begin_request();
        let admitting = {
            let connections = Arc::clone(&connections);
            tokio::spawn(async move { connections.admit().await })
        };
        assert!(closes(&middle).await, "the longest-idle connection was not asked to close");
        assert!(!closes(&oldest).await && !closes(&newest).await);
        assert!(!admitting.is_finished(), "admitted beyond the cap");
        drop(middle);
        let fourth = admitting.await.unwrap();
        assert_eq!(connections.open(), 3);
        assert!(oldest.served_any() && !newest.served_any() && !fourth.served_any());
        drop(busy);
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_a_newcomer_waits_for_one_to_finish() {
        let connections = Connections::new(1);
        let only = Arc::new(connections.admit().await);
        let busy = only.begin_request();
        let admitting = {
            let connections = Arc::clone(&connections);
            tokio::spawn(async move { connections.admit().await })
        };
        tokio::time::sleep(RECHECK + RECHECK / 2).await;
        assert!(!admitting.is_finished() && !closes(&only).await);
        // Once its request is done it is the longest idle, and it is asked to close at the next look.
        drop(busy);
        let asked = tokio::time::timeout(RECHECK * 2, only.close_requested()).await;
        assert!(asked.is_ok(), "the finished connection was not asked to close");
        drop(only);
        let _second = admitting.await.unwrap();
    }

    #[tokio::test]
    async fn close_all_asks_every_connection() {
        let connections = Connections::new(4);
        let a = connections.admit().await;
        let b = connections.admit().await;
        connections.close_all();
        assert!(closes(&a).await && closes(&b).await);
    }
}
