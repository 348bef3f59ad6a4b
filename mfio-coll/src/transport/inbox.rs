//! [`Inbox`]: the messages a rank received and has not yet taken, by
//! sender and key, and the receives waiting for them.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use mfio_core::Result;
use parking_lot::Mutex;
// Keys are a few small integers from the ranks of the group: a fast hash
// (SipHash cost 5% of a small allreduce).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{rank_gone, Key};
use crate::comm::Rank;

/// Messages that arrived before their receive, by `(sender, key)`; a
/// receive takes the oldest one for its pair, or waits for it.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: HashMap<(Rank, Key), Slot>,
    /// Senders that left: a receive from one of them with nothing
    /// waiting fails instead of waiting forever.
    gone: HashSet<Rank>,
    /// Why the group broke (a rank lost), if it did: every receive with
    /// nothing waiting fails with it.
    broken: Option<String>,
    /// Waiting to hear that a sender left or the group broke.
    ending: Vec<Waker>,
    /// Collectives (communicator, sequence number) this rank abandoned:
    /// their messages are dropped on arrival.
    forgotten: HashSet<(u32, u32)>,
}

/// The messages of one sender and key, oldest first, and the receive
/// waiting for them. Almost always one message at most: it is held
/// without a queue of its own.
#[derive(Default)]
struct Slot {
    first: Option<Vec<u8>>,
    more: VecDeque<Vec<u8>>,
    waker: Option<Waker>,
}

impl Slot {
    fn push(&mut self, data: Vec<u8>) {
        if self.first.is_none() {
            self.first = Some(data);
        } else {
            self.more.push_back(data);
        }
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let data = self.first.take()?;
        self.first = self.more.pop_front();
        Some(data)
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Files a message from `from` under `key`, and wakes its receive if
    /// one waits.
    pub fn deliver(&self, from: Rank, key: Key, data: Vec<u8>) {
        let waker = {
            let mut st = self.state.lock();
            if st.forgotten.contains(&(key.comm, key.seq)) {
                return;
            }
            let slot = st.slots.entry((from, key)).or_default();
            slot.push(data);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the oldest message from `from` under `key`, or registers
    /// `cx`'s waker to hear when one arrives.
    ///
    /// # Errors
    /// `ConnectionAborted` if nothing waits and `from` left ([`close`](Self::close)).
    pub fn poll_take(&self, from: Rank, key: Key, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>>> {
        let mut st = self.state.lock();
        if let Some(slot) = st.slots.get_mut(&(from, key)) {
            if let Some(data) = slot.pop() {
                if slot.first.is_none() {
                    st.slots.remove(&(from, key));
                }
                return Poll::Ready(Ok(data));
            }
        }
        // A broken group's reason first: a sender that left after the loss
        // (it gave up because of it) is not the cause.
        if let Some(why) = &st.broken {
            return Poll::Ready(Err(mfio_core::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("{why}; the message from rank {from} ({key}) will not come"),
            )));
        }
        if st.gone.contains(&from) {
            return Poll::Ready(Err(rank_gone(from, key)));
        }
        let slot = st.slots.entry((from, key)).or_default();
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Marks `from` as gone: receives waiting on it, now and later, fail
    /// unless its message is already here.
    pub fn close(&self, from: Rank) {
        let wakers: Vec<Waker> = {
            let mut st = self.state.lock();
            st.gone.insert(from);
            let mut wakers: Vec<Waker> = std::mem::take(&mut st.ending);
            wakers.extend(
                st.slots
                    .iter_mut()
                    .filter(|((r, _), _)| *r == from)
                    .filter_map(|(_, slot)| slot.waker.take()),
            );
            wakers
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Marks the group as broken because of `why` (a rank lost): every
    /// receive with nothing waiting fails with it, now and later. The first
    /// reason stays; returns whether this was it.
    pub fn poison(&self, why: String) -> bool {
        let (first, wakers): (bool, Vec<Waker>) = {
            let mut st = self.state.lock();
            let first = st.broken.is_none();
            st.broken.get_or_insert(why);
            let mut wakers: Vec<Waker> = std::mem::take(&mut st.ending);
            wakers.extend(st.slots.values_mut().filter_map(|slot| slot.waker.take()));
            (first, wakers)
        };
        for w in wakers {
            w.wake();
        }
        first
    }

    /// Ready once `from` left or the group broke, with the group's reason
    /// if it broke.
    pub fn poll_ended(&self, from: Rank, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let mut st = self.state.lock();
        if let Some(why) = &st.broken {
            return Poll::Ready(Some(why.clone()));
        }
        if st.gone.contains(&from) {
            return Poll::Ready(None);
        }
        if !st.ending.iter().any(|w| w.will_wake(cx.waker())) {
            st.ending.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Drops the messages of collective `seq` on communicator `comm`, now
    /// and when they arrive: this rank abandoned it, so nothing will take
    /// them.
    pub fn forget(&self, comm: u32, seq: u32) {
        let mut st = self.state.lock();
        st.forgotten.insert((comm, seq));
        st.slots.retain(|(_, key), _| (key.comm, key.seq) != (comm, seq));
    }

    /// Whether the group broke ([`poison`](Self::poison)).
    pub fn is_broken(&self) -> bool {
        self.state.lock().broken.is_some()
    }

    /// Whether `from` left ([`close`](Self::close)).
    pub fn is_gone(&self, from: Rank) -> bool {
        self.state.lock().gone.contains(&from)
    }

    /// Messages waiting for a receive.
    pub fn waiting(&self) -> usize {
        self.state.lock().slots.values().map(Slot::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn key(step: u32) -> Key {
        Key {
            comm: 1,
            seq: 2,
            step,
            chunk: 0,
        }
    }

    #[test]
    fn early_messages_wait_for_their_key_in_order() {
        let inbox = Inbox::new();
        let mut cx = Context::from_waker(Waker::noop());
        inbox.deliver(3, key(1), b"second step".to_vec());
        inbox.deliver(3, key(0), b"first".to_vec());
        inbox.deliver(3, key(0), b"again".to_vec());
        assert_eq!(inbox.waiting(), 3);
        assert!(inbox.poll_take(2, key(0), &mut cx).is_pending(), "another sender's key");
        let take = |k| match inbox.poll_take(3, k, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(d)) => d,
            other => panic!("expected a message, got {other:?}"),
        };
        assert_eq!(take(key(0)), b"first");
        assert_eq!(take(key(0)), b"again");
        assert_eq!(take(key(1)), b"second step");
        assert_eq!(inbox.waiting(), 0);
    }

    #[test]
    fn a_forgotten_collective_keeps_none_of_its_messages() {
        let inbox = Inbox::new();
        let other = Key { seq: 3, ..key(0) };
        inbox.deliver(1, key(0), vec![1]);
        inbox.deliver(1, key(1), vec![2]);
        inbox.deliver(1, other, vec![3]);
        inbox.forget(1, 2);
        assert_eq!(inbox.waiting(), 1, "only the other collective's message stays");
        inbox.deliver(2, key(5), vec![4]);
        assert_eq!(
            inbox.waiting(),
            1,
            "a late message of the forgotten collective is dropped"
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(inbox.poll_take(1, other, &mut cx), Poll::Ready(Ok(d)) if d == [3]));
    }

    #[test]
    fn a_sender_that_left_after_the_group_broke_is_not_named_the_cause() {
        let inbox = Inbox::new();
        let mut cx = Context::from_waker(Waker::noop());
        inbox.poison("rank 2 is gone".into());
        inbox.close(0);
        match inbox.poll_take(0, key(0), &mut cx) {
            Poll::Ready(Err(e)) => assert!(e.to_string().contains("rank 2 is gone"), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_broken_group_fails_every_receive_with_its_reason() {
        let inbox = Inbox::new();
        let mut cx = Context::from_waker(Waker::noop());
        inbox.deliver(0, key(0), vec![1]);
        assert!(inbox.poll_take(0, key(1), &mut cx).is_pending());
        inbox.poison("rank 2 is gone".into());
        assert!(matches!(inbox.poll_take(0, key(0), &mut cx), Poll::Ready(Ok(d)) if d == [1]));
        for k in [key(1), key(2)] {
            match inbox.poll_take(0, k, &mut cx) {
                Poll::Ready(Err(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
                    assert!(e.to_string().contains("rank 2 is gone"), "{e}");
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_receive_from_a_rank_that_left_fails_unless_its_message_is_here() {
        let inbox = Inbox::new();
        let mut cx = Context::from_waker(Waker::noop());
        inbox.deliver(1, key(0), vec![7]);
        inbox.close(1);
        assert!(matches!(inbox.poll_take(1, key(0), &mut cx), Poll::Ready(Ok(d)) if d == [7]));
        match inbox.poll_take(1, key(1), &mut cx) {
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
                assert!(e.to_string().contains("rank 1"), "{e}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
