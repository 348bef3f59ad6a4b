//! [`Inbox`]: the messages a rank received and has not yet taken, by
//! sender and key, and the receives waiting for them.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use mfio_core::Result;
use parking_lot::Mutex;
// Keys are a few small integers from the ranks of the group: a fast hash
// (SipHash cost 5% of a small allreduce).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{rank_gone, BlockMut, Key};
use crate::comm::Rank;

/// Messages that arrived before their receive, by `(sender, key)`; a
/// receive takes the oldest one for its pair, or waits for it.
pub struct Inbox {
    state: Mutex<State>,
}

impl Default for Inbox {
    fn default() -> Self {
        let mut state = State::default();
        // Room for more slots than are usually in use: in a table not much
        // bigger than its entries, a slot taken and given back each message
        // leaves tombstones that made nine inserts in ten rehash the table
        // (a loop of 8-byte bcasts on 2 ranks).
        state.slots.reserve(SLOTS);
        Self {
            state: Mutex::new(state),
        }
    }
}

/// The slots an inbox has room for from the start.
const SLOTS: usize = 32;

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
    /// The block the waiting receive wants the message in, for a wire that
    /// can land it there ([`Inbox::announce`]).
    claim: Option<BlockMut>,
    /// Messages that landed in their receive's block.
    landed: usize,
    /// Long messages whose bytes wait with the wire for a receive.
    announced: VecDeque<Announced>,
}

/// A long message whose frame came before a receive asked for it: its
/// bytes wait with the wire (the sender's send with them) until one does,
/// then come straight into the receive's block if it has one. One that
/// nobody takes (its collective forgotten, the inbox dropped) is fetched
/// and dropped when it goes, so that its sender's send completes.
#[cfg_attr(not(any(feature = "tcp", feature = "mpi", feature = "ucx")), allow(dead_code))]
pub(crate) struct Announced {
    len: usize,
    fetch: Option<Fetch>,
}

/// Starts the receive of an announced message's bytes: into the block if
/// given ([`Inbox::land`] when they are in), else into a buffer of the
/// wire's ([`Inbox::deliver`]).
type Fetch = Box<dyn FnOnce(Option<BlockMut>) + Send>;

#[cfg_attr(not(any(feature = "tcp", feature = "mpi", feature = "ucx")), allow(dead_code))]
impl Announced {
    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    /// A message of `len` bytes, whose bytes `fetch` receives.
    pub(crate) fn new(len: usize, fetch: impl FnOnce(Option<BlockMut>) + Send + 'static) -> Self {
        Self {
            len,
            fetch: Some(Box::new(fetch)),
        }
    }

    /// Starts the receive of the bytes: into `into` (as long as the
    /// message) if given, else into a buffer.
    fn fetch(mut self, into: Option<BlockMut>) {
        debug_assert!(into.as_ref().is_none_or(|b| b.len() == self.len));
        if let Some(fetch) = self.fetch.take() {
            fetch(into);
        }
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        if let Some(fetch) = self.fetch.take() {
            fetch(None);
        }
    }
}

/// What a receive into a block found ([`Inbox::poll_claim`]).
#[cfg_attr(not(any(feature = "tcp", feature = "mpi", feature = "ucx")), allow(dead_code))]
pub(crate) enum Claimed {
    /// The message's bytes, for the receive to copy into its block (given
    /// back with them).
    Bytes(Vec<u8>, BlockMut),
    /// The message landed in the block.
    Landed,
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
        usize::from(self.first.is_some()) + self.more.len() + self.landed + self.announced.len()
    }

    /// Nothing arrived before the next message: it is the next one a
    /// receive takes.
    fn is_first_in_line(&self) -> bool {
        self.first.is_none() && self.announced.is_empty()
    }

    /// Holds nothing a receive needs: no message, no block.
    fn is_idle(&self) -> bool {
        self.first.is_none() && self.claim.is_none() && self.landed == 0 && self.announced.is_empty()
    }
}

impl State {
    /// Why a receive from `from` under `key` that finds nothing waiting
    /// fails, if it does: the group broke, or `from` left.
    fn no_message(&self, from: Rank, key: Key) -> Result<()> {
        // A broken group's reason first: a sender that left after the loss
        // (it gave up because of it) is not the cause.
        if let Some(why) = &self.broken {
            return Err(mfio_core::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("{why}; the message from rank {from} ({key}) will not come"),
            ));
        }
        if self.gone.contains(&from) {
            return Err(rank_gone(from, key));
        }
        Ok(())
    }

    /// Registers `cx`'s waker in the slot of `from` and `key`.
    fn wait(&mut self, from: Rank, key: Key, cx: &Context<'_>) -> &mut Slot {
        let slot = self.slots.entry((from, key)).or_default();
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        slot
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
        self.file(from, key, |slot| slot.push(data));
    }

    /// Runs `file` on the slot of `from` and `key`, then wakes the receive
    /// waiting there; nothing happens for a forgotten collective.
    fn file(&self, from: Rank, key: Key, file: impl FnOnce(&mut Slot)) {
        let waker = {
            let mut st = self.state.lock();
            if st.forgotten.contains(&(key.comm, key.seq)) {
                return;
            }
            let slot = st.slots.entry((from, key)).or_default();
            file(slot);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    /// As [`deliver`](Self::deliver), for bytes the wire lends only for the
    /// call: copied straight into the block of the receive that waits for
    /// them, if one waits first in line with a block of their length (one
    /// copy fewer), else into a buffer of `pool`'s filed under `key`.
    pub(crate) fn deliver_bytes(&self, from: Rank, key: Key, bytes: &[u8], pool: &super::pool::BufPool) {
        self.file(from, key, |slot| {
            let first_in_line = slot.is_first_in_line();
            match slot.claim.take_if(|b| first_in_line && b.len() == bytes.len()) {
                Some(mut block) => {
                    // SAFETY: a claimed block's receive is in flight until
                    // it hears of the landing; the length is checked.
                    unsafe { block.fill(bytes) };
                    // The block goes back before the receive hears of it.
                    drop(block);
                    slot.landed += 1;
                }
                None => slot.push(pool.copy_of(bytes)),
            }
        });
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
                if slot.is_idle() {
                    st.slots.remove(&(from, key));
                }
                return Poll::Ready(Ok(data));
            }
            if let Some(announced) = slot.announced.pop_front() {
                // Waits for the bytes, asked for now (outside the lock).
                st.wait(from, key, cx);
                drop(st);
                announced.fetch(None);
                return Poll::Pending;
            }
        }
        st.no_message(from, key)?;
        st.wait(from, key, cx);
        Poll::Pending
    }

    #[cfg_attr(not(any(feature = "tcp", feature = "mpi", feature = "ucx")), allow(dead_code))]
    /// As [`poll_take`](Self::poll_take), for a receive into `block`: the
    /// block is left with the inbox while the receive waits, for the wire
    /// to land the message in ([`announce`](Self::announce)); a message
    /// that came as bytes comes back with the block.
    ///
    /// # Errors
    /// As [`poll_take`](Self::poll_take).
    pub(crate) fn poll_claim(
        &self,
        from: Rank,
        key: Key,
        block: &mut Option<BlockMut>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Claimed>> {
        let mut st = self.state.lock();
        if let Some(slot) = st.slots.get_mut(&(from, key)) {
            let found = if slot.landed > 0 {
                slot.landed -= 1;
                Some(Claimed::Landed)
            } else if let Some(b) = block.take().or_else(|| slot.claim.take()) {
                // A block landing a message meanwhile is not in the slot:
                // its message comes first, so the bytes wait.
                match slot.pop() {
                    Some(data) => Some(Claimed::Bytes(data, b)),
                    None => {
                        *block = Some(b);
                        None
                    }
                }
            } else {
                None
            };
            if let Some(found) = found {
                if slot.is_idle() {
                    st.slots.remove(&(from, key));
                }
                return Poll::Ready(Ok(found));
            }
            if let Some(announced) = slot.announced.pop_front() {
                // The bytes, asked for now (outside the lock), come into
                // the block; the receive waits for them.
                let into = match block.take().or_else(|| slot.claim.take()) {
                    Some(b) if b.len() == announced.len => Some(b),
                    other => {
                        // Of another length: the bytes come to a buffer,
                        // and the block waits for them (the receive then
                        // reports the length).
                        slot.claim = other;
                        None
                    }
                };
                st.wait(from, key, cx);
                drop(st);
                announced.fetch(into);
                return Poll::Pending;
            }
        }
        st.no_message(from, key)?;
        let slot = st.wait(from, key, cx);
        if let Some(b) = block.take() {
            slot.claim = Some(b);
        }
        Poll::Pending
    }

    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    /// Files a long message from `from` under `key` whose bytes wait with
    /// the wire: fetched at once into the waiting receive's block if one
    /// waits with a block of its length, or into a buffer if a receive
    /// waits without one; else when a receive asks for it. A message of a
    /// forgotten collective is fetched and dropped.
    pub(crate) fn announce(&self, from: Rank, key: Key, announced: Announced) {
        let fetch_now = {
            let mut st = self.state.lock();
            if st.forgotten.contains(&(key.comm, key.seq)) {
                Some((announced, None))
            } else {
                let slot = st.slots.entry((from, key)).or_default();
                let first_in_line = slot.is_first_in_line();
                let waits = slot.waker.is_some() || slot.claim.is_some();
                if first_in_line && waits {
                    // A block of another length stays: the bytes come to a
                    // buffer, and the receive reports the length.
                    let into = slot.claim.take_if(|b| b.len() == announced.len);
                    Some((announced, into))
                } else {
                    slot.announced.push_back(announced);
                    None
                }
            }
        };
        if let Some((announced, into)) = fetch_now {
            announced.fetch(into);
        }
    }

    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    /// A message from `from` under `key` landed in the block its receive
    /// left ([`announce`](Self::announce)): wakes the receive.
    pub(crate) fn land(&self, from: Rank, key: Key) {
        self.file(from, key, |slot| slot.landed += 1);
    }

    #[cfg_attr(not(any(feature = "tcp", feature = "mpi", feature = "ucx")), allow(dead_code))]
    /// A receive into a block went away before its message came: its block
    /// is not for the wire any more.
    pub(crate) fn unclaim(&self, from: Rank, key: Key) {
        let mut st = self.state.lock();
        if let Some(slot) = st.slots.get_mut(&(from, key)) {
            slot.claim = None;
            slot.waker = None;
            if slot.is_idle() {
                st.slots.remove(&(from, key));
            }
        }
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
    /// if it broke. Every waker it is polled with is kept until then: poll
    /// it with one that stays the same (the background's), or once the
    /// wire already failed.
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
        let dropped: Vec<Slot> = {
            let mut st = self.state.lock();
            st.forgotten.insert((comm, seq));
            let of_it: Vec<(Rank, Key)> = (st.slots.keys())
                .filter(|(_, key)| (key.comm, key.seq) == (comm, seq))
                .copied()
                .collect();
            of_it.iter().filter_map(|k| st.slots.remove(k)).collect()
        };
        // Dropped outside the lock: an announced message's bytes are
        // fetched as it drops, and the wire may file them here at once.
        drop(dropped);
    }

    /// Whether the group broke ([`poison`](Self::poison)).
    pub fn is_broken(&self) -> bool {
        self.state.lock().broken.is_some()
    }

    /// Why the group broke, if it did ([`poison`](Self::poison)).
    pub fn broken_because(&self) -> Option<String> {
        self.state.lock().broken.clone()
    }

    /// Whether `from` left ([`close`](Self::close)).
    pub fn is_gone(&self, from: Rank) -> bool {
        self.state.lock().gone.contains(&from)
    }

    /// Messages waiting for a receive.
    pub fn waiting(&self) -> usize {
        self.state.lock().slots.values().map(Slot::len).sum()
    }

    #[cfg_attr(not(feature = "ucx"), allow(dead_code))]
    /// Whether a receive waits for a message that has not come.
    pub(crate) fn receiving(&self) -> bool {
        (self.state.lock().slots.values())
            .any(|s| (s.waker.is_some() || s.claim.is_some()) && s.first.is_none() && s.landed == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::pool::BufPool;
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

    /// An announced message whose fetches are recorded: (into a block?, its length).
    fn announced(len: usize, log: &std::sync::Arc<Mutex<Vec<Option<usize>>>>) -> Announced {
        let log = log.clone();
        Announced::new(len, move |into| log.lock().push(into.map(|b| b.len())))
    }

    #[test]
    fn lent_bytes_go_into_the_waiting_block_only_when_first_in_line() {
        use crate::transport::Lent;
        let inbox = Inbox::new();
        let mut cx = Context::from_waker(Waker::noop());
        let lent = Lent::new(vec![0u8; 8]);
        // The receive waits with a block of their length: copied into it.
        let mut block = Some(lent.block_mut(0..4));
        assert!(inbox.poll_claim(1, key(0), &mut block, &mut cx).is_pending());
        inbox.deliver_bytes(1, key(0), &[1, 2, 3, 4], &BufPool::default());
        assert!(matches!(
            inbox.poll_claim(1, key(0), &mut block, &mut cx),
            Poll::Ready(Ok(Claimed::Landed))
        ));
        // A block of another length: the bytes come as bytes, with it;
        // bytes of its length behind them do not jump the queue.
        let mut block = Some(lent.block_mut(4..8));
        assert!(inbox.poll_claim(1, key(1), &mut block, &mut cx).is_pending());
        inbox.deliver_bytes(1, key(1), &[9; 3], &BufPool::default());
        inbox.deliver_bytes(1, key(1), &[8; 4], &BufPool::default());
        assert_eq!(inbox.waiting(), 2);
        let mut block = match inbox.poll_claim(1, key(1), &mut block, &mut cx) {
            Poll::Ready(Ok(Claimed::Bytes(data, b))) if data == [9; 3] => Some(b),
            _ => panic!("expected the first bytes and the block"),
        };
        match inbox.poll_claim(1, key(1), &mut block, &mut cx) {
            Poll::Ready(Ok(Claimed::Bytes(data, b))) => assert_eq!((data, b.len()), (vec![8; 4], 4)),
            _ => panic!("expected the next bytes and the block"),
        }
        assert_eq!(inbox.waiting(), 0);
        assert_eq!(
            lent.finish(&Ok(())),
            [1, 2, 3, 4, 0, 0, 0, 0],
            "only the first block was filled"
        );
        // Bytes of a forgotten collective are dropped.
        inbox.forget(1, 5);
        inbox.deliver_bytes(1, Key { seq: 5, ..key(0) }, &[1], &BufPool::default());
        assert_eq!(inbox.waiting(), 0);
    }

    #[test]
    fn a_long_message_comes_into_the_waiting_block_or_waits_for_its_receive() {
        use crate::transport::Lent;
        let inbox = Inbox::new();
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut cx = Context::from_waker(Waker::noop());
        let lent = Lent::new(vec![0u8; 8]);
        // The receive waits first: the bytes are fetched into its block.
        let mut block = Some(lent.block_mut(0..4));
        assert!(inbox.poll_claim(1, key(0), &mut block, &mut cx).is_pending());
        assert!(block.is_none(), "the block waits with the inbox");
        inbox.announce(1, key(0), announced(4, &log));
        assert_eq!(*log.lock(), [Some(4)], "fetched into the block at once");
        inbox.land(1, key(0));
        assert!(matches!(
            inbox.poll_claim(1, key(0), &mut block, &mut cx),
            Poll::Ready(Ok(Claimed::Landed))
        ));
        assert_eq!(inbox.waiting(), 0);
        // The frame comes first: the bytes wait until a receive asks.
        inbox.announce(1, key(1), announced(4, &log));
        assert_eq!(log.lock().len(), 1, "nobody asked yet");
        assert_eq!(inbox.waiting(), 1);
        let mut block = Some(lent.block_mut(4..8));
        assert!(inbox.poll_claim(1, key(1), &mut block, &mut cx).is_pending());
        assert_eq!(log.lock()[1], Some(4), "fetched into the block the receive brought");
        inbox.land(1, key(1));
        assert!(matches!(
            inbox.poll_claim(1, key(1), &mut block, &mut cx),
            Poll::Ready(Ok(Claimed::Landed))
        ));
        // A receive without a block has the bytes fetched into a buffer.
        inbox.announce(2, key(2), announced(4, &log));
        assert!(inbox.poll_take(2, key(2), &mut cx).is_pending());
        assert_eq!(log.lock()[2], None);
        inbox.deliver(2, key(2), vec![5; 4]);
        assert!(matches!(inbox.poll_take(2, key(2), &mut cx), Poll::Ready(Ok(d)) if d == [5; 4]));
        // A block of another length: the bytes come as bytes, with the block.
        let mut block = Some(lent.block_mut(0..8));
        assert!(inbox.poll_claim(1, key(3), &mut block, &mut cx).is_pending());
        inbox.announce(1, key(3), announced(5, &log));
        assert_eq!(log.lock()[3], None, "not into a block of another length");
        inbox.deliver(1, key(3), vec![1; 5]);
        match inbox.poll_claim(1, key(3), &mut block, &mut cx) {
            Poll::Ready(Ok(Claimed::Bytes(data, b))) => assert_eq!((data.len(), b.len()), (5, 8)),
            _ => panic!("expected the bytes and the block"),
        }
        // A receive that goes first takes its block back.
        let mut block = Some(lent.block_mut(0..8));
        assert!(inbox.poll_claim(1, key(4), &mut block, &mut cx).is_pending());
        inbox.unclaim(1, key(4));
        assert_eq!(inbox.waiting(), 0);
        assert_eq!(lent.finish(&Ok(())), [0; 8], "no block is lent any more");
        // Nobody takes it (forgotten, or left behind): fetched to be dropped.
        inbox.announce(3, key(5), announced(4, &log));
        inbox.forget(1, 2);
        assert_eq!(log.lock()[4], None, "a forgotten message's bytes are fetched");
        inbox.announce(3, key(6), announced(4, &log));
        assert_eq!(log.lock()[5], None, "and a late one's");
        assert_eq!(inbox.waiting(), 0);
    }
    /// A wire that fetches at once (single copy within a host) files the
    /// bytes from within the fetch: the inbox must not hold its lock then.
    #[test]
    fn bytes_fetched_at_once_are_filed_from_within_the_fetch() {
        use crate::transport::Lent;
        let inbox = std::sync::Arc::new(Inbox::new());
        let at_once = |from: Rank, k: Key, len: usize| {
            let inbox = std::sync::Arc::downgrade(&inbox);
            Announced::new(len, move |into: Option<BlockMut>| {
                let Some(inbox) = inbox.upgrade() else { return };
                match into {
                    Some(mut block) => {
                        // SAFETY: the block is this receive's, and nothing else touches it.
                        unsafe { block.fill(&vec![9; len]) };
                        drop(block);
                        inbox.land(from, k);
                    }
                    None => inbox.deliver(from, k, vec![9; len]),
                }
            })
        };
        let mut cx = Context::from_waker(Waker::noop());
        let lent = Lent::new(vec![0u8; 8]);
        // The receive waits: the bytes land as the frame comes.
        let mut block = Some(lent.block_mut(0..4));
        assert!(inbox.poll_claim(1, key(0), &mut block, &mut cx).is_pending());
        inbox.announce(1, key(0), at_once(1, key(0), 4));
        assert!(matches!(
            inbox.poll_claim(1, key(0), &mut block, &mut cx),
            Poll::Ready(Ok(Claimed::Landed))
        ));
        // The frame comes first: the bytes land when the receive asks.
        inbox.announce(1, key(1), at_once(1, key(1), 4));
        let mut block = Some(lent.block_mut(4..8));
        let _ = inbox.poll_claim(1, key(1), &mut block, &mut cx);
        assert!(matches!(
            inbox.poll_claim(1, key(1), &mut block, &mut cx),
            Poll::Ready(Ok(Claimed::Landed))
        ));
        assert_eq!(lent.finish(&Ok(())), [9; 8]);
        // Forgotten, before and after the frame: fetched and dropped.
        inbox.announce(2, key(2), at_once(2, key(2), 4));
        inbox.forget(1, 2);
        inbox.announce(2, key(3), at_once(2, key(3), 4));
        assert_eq!(inbox.waiting(), 0);
    }
}
