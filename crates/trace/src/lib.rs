//! # A per-CPU event trace in fixed-size rings
//!
//! What the interrupt and locking machinery does, one record per event, so that a reader
//! can *see* an interrupt arrive, a pinned borrow, a divorce, a migration, a switch.
//!
//! ## Cost
//! Recording is compiled in only with this crate's `enabled` feature (the kernel's `trace`
//! feature turns it on; the host tool builds such a kernel only for traced runs). Without
//! it [`emit`] is an empty inline function and no crate that calls it carries any of it: the
//! benchmark figures come from a build with none of it.
//!
//! ## Protocol
//! - A [`Trace`] holds one ring of `capacity` slots per CPU. [`Trace::install`] publishes it
//!   once (a `'static` pointer); before that, and in a build without `enabled`, [`emit`]
//!   records nothing.
//! - **Writers.** Only CPU `c` writes ring `c`, from any context (thread, interrupt, nested
//!   interrupt), with interrupts on or off. A writer takes a sequence number with a
//!   `fetch_add` on the ring's head (so a nested interrupt on the same CPU takes the next
//!   one and never shares a slot with the record it interrupted), marks the slot as being
//!   written, writes the fields and publishes the slot with its sequence number + 1
//!   (release). The ring keeps the last `capacity` records; older ones are overwritten.
//! - **Readers** ([`Trace::records`]) may run while CPUs still write. A slot is read as a
//!   seqlock: its stamp before and after the fields must both equal the sequence number the
//!   reader expects there, else the record was overwritten or is half-written and is
//!   skipped (and counted in [`Records::torn`]).
//! - A record is `(seq, ts, cpu, kind, thread, arg)`: the time in the machine's nanoseconds,
//!   the kind ([`Kind`]), the running thread (the machine's `curthread` address, an opaque
//!   identity) and one argument whose meaning the kind gives.
//!
//! The text form, one record per line ([`Record`]'s `Display`, parsed back by
//! [`Record::parse`]), is what the kernel prints after `@@ trace ` (docs/PROTOCOL.md).
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::AtomicPtr;
// The rings' atomics are loom's under `--cfg loom` (`tests/loom_ring.rs` checks the writer
// and reader protocol as written here); the installed-trace pointer is not part of it.
#[cfg(not(loom))]
use core::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU64, Ordering};

/// Whether this build records events (the `enabled` feature).
pub const ENABLED: bool = cfg!(feature = "enabled");

/// How a kind shows on a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opens a slice; the matching [`Phase::End`] closes it.
    Begin,
    /// Closes the innermost open slice of the same name on its track.
    End,
    /// A point in time.
    Instant,
}

/// Which track an event belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The CPU's track: interrupts and what the CPU switches to.
    Cpu,
    /// The running thread's track: handlers, soft interrupts, blocking, lock contention.
    Thread,
    /// The track of the thread named by the argument (a wake-up goes on the woken thread).
    ArgThread,
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident = $n:literal, $text:literal, $phase:ident, $track:ident, $slice:literal; )*) => {
        /// What happened. The argument's meaning is given per kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Kind {
            $( $(#[$doc])* $name = $n, )*
        }

        impl Kind {
            /// Every kind.
            pub const ALL: &'static [Kind] = &[$(Kind::$name),*];

            /// The kind's name in the text form.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$name => $text,)* }
            }

            /// How it shows on a timeline.
            pub fn phase(self) -> Phase {
                match self { $(Kind::$name => Phase::$phase,)* }
            }

            /// Where it shows.
            pub fn track(self) -> Track {
                match self { $(Kind::$name => Track::$track,)* }
            }

            /// The slice a begin or end kind opens or closes (begin and end share it).
            pub fn slice(self) -> &'static str {
                match self { $(Kind::$name => $slice,)* }
            }

            fn from_u8(n: u8) -> Option<Kind> {
                match n { $($n => Some(Kind::$name),)* _ => None }
            }

            /// The kind named `s` in the text form.
            pub fn from_name(s: &str) -> Option<Kind> {
                match s { $($text => Some(Kind::$name),)* _ => None }
            }
        }
    };
}

kinds! {
    /// An interrupt entered on this CPU (after any SPL deferral). Argument: the vector.
    IntrEnter = 1, "intr.enter", Begin, Cpu, "interrupt";
    /// That interrupt's path ends (before the preemption point). Argument: the vector.
    IntrExit = 2, "intr.exit", End, Cpu, "interrupt";
    /// An interrupt at or below the CPU's level was deferred. Argument: the vector.
    IntrDefer = 3, "intr.defer", Instant, Cpu, "";
    /// A source's filter ran. Argument: the vector.
    Filter = 4, "filter", Instant, Cpu, "";
    /// A source's handler starts. Argument: the vector.
    HandlerBegin = 5, "handler.begin", Begin, Thread, "handler";
    /// It returns. Argument: the vector.
    HandlerEnd = 6, "handler.end", End, Thread, "handler";
    /// A pinned interrupt thread borrows the CPU. Argument: the vector.
    PinBorrow = 7, "pin.borrow", Begin, Cpu, "pinned borrow";
    /// The borrow ends (the handler returned, or blocked and was released). Argument: 0
    /// returned, 1 blocked, 2 the thread was busy, 3 the level was wrong (nothing ran).
    PinReturn = 8, "pin.return", End, Cpu, "pinned borrow";
    /// The running thread blocks. Argument: 0.
    Block = 9, "block", Instant, Thread, "";
    /// A thread is made runnable. Argument: that thread.
    Wakeup = 10, "wakeup", Instant, ArgThread, "";
    /// This CPU switches threads. Argument: the next thread (the record's thread is the one
    /// leaving).
    Switch = 11, "switch", Instant, Cpu, "";
    /// A pool ithread that blocked in a handler is divorced from its CPU. Argument: the CPU.
    Divorce = 12, "divorce", Instant, Thread, "";
    /// A pool ithread goes to serve another CPU. Argument: that CPU.
    Migrate = 13, "migrate", Instant, Thread, "";
    /// A soft interrupt's handler starts. Argument: its level.
    SoftBegin = 14, "softint.begin", Begin, Thread, "softint";
    /// It returns. Argument: its level.
    SoftEnd = 15, "softint.end", End, Thread, "softint";
    /// A lock was found held (the slow path is taken). Argument: the lock's address.
    LockContend = 16, "lock.contend", Instant, Thread, "";
    /// A source was throttled as a storm. Argument: the vector.
    StormThrottle = 17, "storm.throttle", Instant, Cpu, "";
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number in its CPU's ring (0, 1, ...).
    pub seq: u64,
    /// The machine's nanoseconds.
    pub ts: u64,
    /// The CPU that recorded it.
    pub cpu: u32,
    /// What happened.
    pub kind: Kind,
    /// The running thread (an opaque identity: the machine's `curthread` address).
    pub thread: u64,
    /// The kind's argument.
    pub arg: u64,
}

impl fmt::Display for Record {
    /// `cpu=C seq=N ts=T kind=K thread=0xX arg=0xA`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} seq={} ts={} kind={} thread={:#x} arg={:#x}",
            self.cpu,
            self.seq,
            self.ts,
            self.kind.name(),
            self.thread,
            self.arg
        )
    }
}

/// Why a text record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The field that is missing or malformed.
    pub field: &'static str,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace record: field '{}' missing or malformed", self.field)
    }
}

fn field<'a>(s: &'a str, key: &'static str) -> Result<&'a str, BadRecord> {
    s.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .ok_or(BadRecord { field: key })
}

fn number(s: &str, key: &'static str) -> Result<u64, BadRecord> {
    let v = field(s, key)?;
    let r = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    r.map_err(|_| BadRecord { field: key })
}

impl Record {
    /// Reads the text form written by `Display`.
    pub fn parse(s: &str) -> Result<Record, BadRecord> {
        let cpu = number(s, "cpu")?;
        Ok(Record {
            cpu: u32::try_from(cpu).map_err(|_| BadRecord { field: "cpu" })?,
            seq: number(s, "seq")?,
            ts: number(s, "ts")?,
            kind: Kind::from_name(field(s, "kind")?).ok_or(BadRecord { field: "kind" })?,
            thread: number(s, "thread")?,
            arg: number(s, "arg")?,
        })
    }
}

/// A slot's stamp while it is being written.
const WRITING: u64 = u64::MAX;

struct Slot {
    /// `seq + 1` once the record with sequence number `seq` is complete; [`WRITING`] while
    /// a writer is in it; 0 never written.
    stamp: AtomicU64,
    ts: AtomicU64,
    /// The kind in the top byte, the argument in the low 56 bits.
    kind_arg: AtomicU64,
    thread: AtomicU64,
}

struct Ring {
    head: AtomicU64,
    slots: Box<[Slot]>,
}

/// The argument bits kept (the top byte holds the kind).
pub const ARG_MASK: u64 = (1 << 56) - 1;

/// Every CPU's ring.
pub struct Trace {
    rings: Box<[Ring]>,
    capacity: u64,
}

/// A reader's view of one CPU's ring.
#[derive(Debug, Default, Clone)]
pub struct Records {
    /// The complete records still in the ring, oldest first.
    pub records: Vec<Record>,
    /// Records written over (the ring wrapped): the first kept record's sequence number.
    pub overwritten: u64,
    /// Slots skipped because a writer was in them, or overwrote them, while read.
    pub torn: u64,
}

impl Trace {
    /// Rings for `ncpus` CPUs, `capacity` records each (at least 1).
    pub fn new(ncpus: usize, capacity: usize) -> Trace {
        let capacity = capacity.max(1);
        let rings = (0..ncpus)
            .map(|_| Ring {
                head: AtomicU64::new(0),
                slots: (0..capacity)
                    .map(|_| Slot {
                        stamp: AtomicU64::new(0),
                        ts: AtomicU64::new(0),
                        kind_arg: AtomicU64::new(0),
                        thread: AtomicU64::new(0),
                    })
                    .collect(),
            })
            .collect();
        Trace { rings, capacity: capacity as u64 }
    }

    /// The number of CPUs.
    pub fn ncpus(&self) -> usize {
        self.rings.len()
    }

    /// Records one event in `cpu`'s ring. Only CPU `cpu` may call this (see the protocol);
    /// a `cpu` beyond the rings is ignored.
    #[inline]
    pub fn record(&self, cpu: usize, ts: u64, kind: Kind, thread: u64, arg: u64) {
        let Some(r) = self.rings.get(cpu) else { return };
        let seq = r.head.fetch_add(1, Ordering::Relaxed);
        let slot = &r.slots[(seq % self.capacity) as usize];
        slot.stamp.store(WRITING, Ordering::Relaxed);
        // The stamp's change is ordered before the fields' (a reader that sees a new field
        // then sees WRITING or a newer stamp on its second look).
        fence(Ordering::Release);
        slot.ts.store(ts, Ordering::Relaxed);
        slot.kind_arg.store(((kind as u64) << 56) | (arg & ARG_MASK), Ordering::Relaxed);
        slot.thread.store(thread, Ordering::Relaxed);
        slot.stamp.store(seq + 1, Ordering::Release);
    }

    /// The records of `cpu`'s ring, oldest first (see the protocol for a ring still written).
    pub fn records(&self, cpu: usize) -> Records {
        let Some(r) = self.rings.get(cpu) else { return Records::default() };
        let head = r.head.load(Ordering::Acquire);
        let first = head.saturating_sub(self.capacity);
        let mut out = Records { records: Vec::new(), overwritten: first, torn: 0 };
        for seq in first..head {
            let slot = &r.slots[(seq % self.capacity) as usize];
            let before = slot.stamp.load(Ordering::Acquire);
            let ts = slot.ts.load(Ordering::Relaxed);
            let kind_arg = slot.kind_arg.load(Ordering::Relaxed);
            let thread = slot.thread.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let after = slot.stamp.load(Ordering::Relaxed);
            let kind = Kind::from_u8((kind_arg >> 56) as u8);
            match kind {
                Some(kind) if before == seq + 1 && after == seq + 1 => out.records.push(Record {
                    seq,
                    ts,
                    cpu: cpu as u32,
                    kind,
                    thread,
                    arg: kind_arg & ARG_MASK,
                }),
                _ => out.torn += 1,
            }
        }
        out
    }

    /// Makes this trace the one [`emit`] records into. Once only: a second install is
    /// refused (`false`), since records already taken point into the first.
    pub fn install(t: &'static Trace) -> bool {
        use core::sync::atomic::Ordering;
        ACTIVE
            .compare_exchange(
                core::ptr::null_mut(),
                t as *const Trace as *mut Trace,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The installed trace, if any.
    pub fn active() -> Option<&'static Trace> {
        let p = ACTIVE.load(core::sync::atomic::Ordering::Acquire);
        // SAFETY: ACTIVE is null or a `&'static Trace` stored by `install`.
        unsafe { p.as_ref() }
    }
}

static ACTIVE: AtomicPtr<Trace> = AtomicPtr::new(core::ptr::null_mut());

/// Records `kind` with `arg` on the calling CPU, if this build records and a trace is
/// installed; otherwise nothing (and, without the `enabled` feature, no code at all).
#[inline(always)]
pub fn emit<M: machine::Machine>(kind: Kind, arg: u64) {
    #[cfg(feature = "enabled")]
    if let Some(t) = Trace::active() {
        t.record(M::cpu_index(), M::now_ns(), kind, M::curthread() as u64, arg);
    }
    #[cfg(not(feature = "enabled"))]
    let _ = (kind, arg);
}
