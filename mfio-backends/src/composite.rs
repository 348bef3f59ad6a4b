//! [`Composite`]: several backends behind one pollable descriptor, so one
//! `block_on` (or one tokio `AsyncFd`, one smol `Async`) drives them all.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mfio_core::{DriveStatus, Interest, IoBackend, Notifier, OwnedSleeperGuard, PollingHandle, Result};
use rustix::event::epoll;

/// epoll token of the composite's own eventfd.
const OWN_TOKEN: u64 = u64::MAX;
/// Ready members read per driving step (more are simply driven anyway).
const EVENTS: usize = 64;
/// Rounds of a spin between two yields of the core.
const YIELD_EVERY: u32 = 16;

struct Member {
    backend: Box<dyn IoBackend + Send + Sync>,
    notifier: Arc<Notifier>,
    /// The composite waits on the member's descriptor, so every notification
    /// of the member must write it.
    _sleeper: OwnedSleeperGuard,
}

/// Several backends behind one descriptor: an epoll set holding each
/// member's polling descriptor and the composite's own eventfd.
///
/// Handles of the members (files of a runtime, mem files, …) keep working
/// as they are; driving the composite drives every member.
///
/// ```
/// use mfio_backends::{BackendKind, Composite, Runtime};
/// use mfio_core::mem::MemBackend;
/// use mfio_core::{IoBackendExt, IoRead};
///
/// # fn main() -> mfio_core::Result<()> {
/// let poll = Runtime::builder().backend(BackendKind::Poll).build()?;
/// let mem = MemBackend::new()?;
/// let file = mem.file(b"driven through the composite".to_vec());
/// let both = Composite::new(vec![Box::new(poll), Box::new(mem)])?;
/// let (res, buf) = both.block_on(file.read_at(0, Vec::with_capacity(6))).into_parts();
/// assert_eq!((res?, buf.as_slice()), (6, &b"driven"[..]));
/// # Ok(()) }
/// ```
pub struct Composite {
    members: Vec<Member>,
    epoll: OwnedFd,
    notifier: Arc<Notifier>,
}

impl std::fmt::Debug for Composite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composite")
            .field("members", &self.members.len())
            .finish()
    }
}

impl Composite {
    /// Puts `members` behind one descriptor.
    ///
    /// # Errors
    /// The OS error of `epoll_create`/`epoll_ctl` or of the eventfd.
    pub fn new(members: Vec<Box<dyn IoBackend + Send + Sync>>) -> Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let notifier = Notifier::new()?;
        epoll::add(
            &epoll,
            notifier.as_fd(),
            epoll::EventData::new_u64(OWN_TOKEN),
            epoll::EventFlags::IN,
        )?;
        let mut out = Vec::with_capacity(members.len());
        for (i, backend) in members.into_iter().enumerate() {
            let handle = backend.polling_handle();
            let flags = match handle.interest {
                Interest::Readable => epoll::EventFlags::IN,
                Interest::Writable => epoll::EventFlags::OUT,
            };
            // Level-triggered: a member left ready is looked at again.
            epoll::add(&epoll, handle.fd, epoll::EventData::new_u64(i as u64), flags)?;
            let notifier = handle.notifier.clone();
            let sleeper = notifier.sleeper_owned();
            out.push(Member {
                backend,
                notifier,
                _sleeper: sleeper,
            });
        }
        Ok(Self {
            members: out,
            epoll,
            notifier,
        })
    }

    /// Number of member backends.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True if there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Drains the notifications of the members that are ready now.
    fn drain_ready(&self) {
        let mut buf = [std::mem::MaybeUninit::<epoll::Event>::uninit(); EVENTS];
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        if let Ok((events, _)) = epoll::wait(&self.epoll, &mut buf[..], Some(&ts)) {
            for e in events.iter() {
                let token = e.data.u64();
                if token == OWN_TOKEN {
                    self.notifier.clear();
                } else if let Some(m) = usize::try_from(token).ok().and_then(|i| self.members.get(i)) {
                    m.notifier.drain();
                }
            }
        }
    }
}

impl IoBackend for Composite {
    fn polling_handle(&self) -> PollingHandle<'_> {
        PollingHandle::readable(self.epoll.as_fd(), &self.notifier)
    }

    /// Drains the members that signalled, then drives every member. A
    /// member's own spinning step would wait for a completion of its own
    /// for up to its budget while the others wait too (a UCX worker with a
    /// receive pending would hold up a file read for its whole spin): so
    /// every member gets steps without a spin, round and round, until one
    /// makes progress or the longest budget a member had is spent.
    fn drive(&self) -> DriveStatus {
        let budget = self.spin_budget();
        let status = self.drive_members(|b| b.drive_now());
        if status.progress || budget.is_zero() {
            return status;
        }
        let deadline = mfio_core::deadline_after(budget);
        let mut round = 0u32;
        loop {
            let status = self.step_members(|b| b.drive_now());
            // The caller's task woken from another thread goes first too.
            if status.progress || Instant::now() >= deadline || mfio_core::task_woken() {
                return status;
            }
            // A member signalled (a pool thread finished an operation and
            // woke its task itself, say): let the caller look. The next
            // step drains the notification.
            if self.notifier.is_notified() || self.members.iter().any(|m| m.notifier.is_notified()) {
                return DriveStatus {
                    progress: true,
                    timeout: None,
                };
            }
            round = round.wrapping_add(1);
            if round % YIELD_EVERY == 0 {
                // A peer this waits for may share the core: let it run.
                std::thread::yield_now();
            }
        }
    }

    /// As [`drive`](Self::drive), with every member's step not spinning.
    fn drive_now(&self) -> DriveStatus {
        self.drive_members(|b| b.drive_now())
    }

    /// The longest budget of a member.
    fn spin_budget(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.backend.spin_budget())
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

impl Composite {
    /// Drains the members that signalled, then drives each with `step`.
    fn drive_members(&self, step: impl Fn(&dyn IoBackend) -> DriveStatus) -> DriveStatus {
        self.drain_ready();
        self.step_members(step)
    }

    /// Drives each member with `step`.
    fn step_members(&self, step: impl Fn(&dyn IoBackend) -> DriveStatus) -> DriveStatus {
        let mut progress = false;
        let mut timeout: Option<Duration> = None;
        for m in &self.members {
            let s = step(&*m.backend);
            progress |= s.progress;
            timeout = match (timeout, s.timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        DriveStatus { progress, timeout }
    }
}
