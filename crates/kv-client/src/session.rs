//! The client's sessions: every write takes the next number of an open session and keeps
//! it on each retry, so the cluster applies it at most once while keeping only the
//! answers of the writes still in flight (see `kv_core::session`). A write done (answered,
//! or given up) is acknowledged by the next write's `ack`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use kv_core::SESSION_WINDOW;

/// The sessions of one client.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<Vec<Open>>,
    /// Held while a session is being opened, so concurrent writers open one, not many.
    pub(crate) opening: tokio::sync::Mutex<()>,
}

struct Open {
    id: u128,
    next_seq: u64,
    in_flight: BTreeSet<u64>,
    /// The cluster no longer knows it: no new writes take it.
    ended: bool,
}

/// One write's place in a session, given back (and so acknowledged by later writes)
/// when dropped.
pub(crate) struct Ticket {
    sessions: Arc<Sessions>,
    id: u128,
    seq: u64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next number of an open session with room in its window, if there is one.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Ticket> {
        let mut open = self.lock();
        let session = open.iter_mut().find(|s| {
            let oldest = s.in_flight.first().copied().unwrap_or(s.next_seq);
            !s.ended && s.next_seq - oldest < SESSION_WINDOW
        })?;
        let seq = session.next_seq;
        session.next_seq += 1;
        session.in_flight.insert(seq);
        Some(Ticket {
            sessions: self.clone(),
            id: session.id,
            seq,
        })
    }

    /// Adds session `id`, just opened.
    pub(crate) fn add(&self, id: u128) {
        self.lock().push(Open {
            id,
            next_seq: 1,
            in_flight: BTreeSet::new(),
            ended: false,
        });
    }

    /// Marks session `id` as ended (writes in flight keep it, new ones take another), and
    /// drops every session with nothing in flight: the cluster ends sessions that go
    /// idle, so those have likely ended too.
    pub(crate) fn end(&self, id: u128) {
        let mut open = self.lock();
        if let Some(s) = open.iter_mut().find(|s| s.id == id) {
            s.ended = true;
        }
        open.retain(|s| !s.in_flight.is_empty());
    }

    fn done(&self, id: u128, seq: u64) {
        let mut open = self.lock();
        if let Some(s) = open.iter_mut().find(|s| s.id == id) {
            s.in_flight.remove(&seq);
        }
        open.retain(|s| !(s.ended && s.in_flight.is_empty()));
    }
}

impl Ticket {
    /// The session this write belongs to.
    pub(crate) fn session(&self) -> u128 {
        self.id
    }

    /// The `Kv-Session` header for an attempt of this write now: the lowest number still
    /// in flight is the acknowledgment, so every write below it is done.
    pub(crate) fn header(&self) -> String {
        let ack = {
            let open = self.sessions.lock();
            open.iter()
                .find(|s| s.id == self.id)
                .and_then(|s| s.in_flight.first().copied())
                .unwrap_or(self.seq)
        };
        kv_core::session::session_header(self.id, self.seq, ack.min(self.seq))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.sessions.done(self.id, self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_numbered_and_acknowledge_the_ones_done() {
        let sessions = Arc::new(Sessions::default());
        assert!(sessions.take().is_none(), "no session open yet");
        sessions.add(0xab);
        let first = sessions.take().expect("a ticket");
        let second = sessions.take().expect("a ticket");
        assert_eq!(second.header(), format!("{:032x}; seq=2; ack=1", 0xab));
        drop(first);
        assert_eq!(second.header(), format!("{:032x}; seq=2; ack=2", 0xab));
        let third = sessions.take().expect("a ticket");
        drop(second);
        assert_eq!(third.header(), format!("{:032x}; seq=3; ack=3", 0xab));
    }

    #[test]
    fn a_write_stuck_in_flight_closes_the_window_and_another_session_takes_over() {
        let sessions = Arc::new(Sessions::default());
        sessions.add(1);
        let stuck = sessions.take().expect("a ticket");
        for _ in 1..SESSION_WINDOW {
            drop(sessions.take().expect("a ticket"));
        }
        assert!(sessions.take().is_none(), "the window is full behind seq 1");
        sessions.add(2);
        let other = sessions.take().expect("a ticket in the new session");
        assert_eq!(other.session(), 2);
        drop(stuck);
        assert_eq!(sessions.take().expect("room again").session(), 1);
    }

    #[test]
    fn when_one_session_ended_the_idle_ones_go_too() {
        let sessions = Arc::new(Sessions::default());
        for id in 1..=3 {
            sessions.add(id);
        }
        let busy = sessions.take().expect("a ticket");
        assert_eq!(busy.session(), 1);
        sessions.end(2);
        assert_eq!(sessions.lock().len(), 1, "only the busy session stays");
        assert_eq!(sessions.take().expect("a ticket").session(), 1);
    }

    #[test]
    fn an_ended_session_takes_no_new_writes_and_goes_when_its_last_is_done() {
        let sessions = Arc::new(Sessions::default());
        sessions.add(1);
        let in_flight = sessions.take().expect("a ticket");
        sessions.end(1);
        assert!(sessions.take().is_none());
        drop(in_flight);
        assert!(sessions.lock().is_empty());
    }
}
