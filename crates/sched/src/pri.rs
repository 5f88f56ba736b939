//! Scheduling priorities.
//!
//! One number space for every thread, larger is more urgent, as in NetBSD (`PRI_*`). The top
//! of the range is reserved for the interrupt priority levels ([`Priority::of_ipl`]): soft
//! interrupt threads sit above every ordinary kernel thread, and
//! hardware interrupt threads above those, so an interrupt thread that blocks and is switched
//! back in outranks everything that is not an interrupt.
//!
//! | range | who |
//! |---|---|
//! | 0 | idle threads only |
//! | 1 ..= 63 | timeshared kernel threads (`PRI_KTHREAD` = 32 is the default) |
//! | 64 ..= 95 | real-time kernel threads |
//! | 96 ..= 111 | soft interrupt threads (`PRI_SOFTINT_BASE`) |
//! | 112 ..= 127 | hardware interrupt threads (`PRI_INTR_BASE`) |

use core::fmt;

/// Number of distinct priorities.
pub const NPRI: usize = 128;
const _: () = assert!(NPRI.is_power_of_two()); // `Thread::rq_index` masks with NPRI - 1

/// A scheduling priority; larger runs first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Priority(u8);

impl Priority {
    /// The idle threads' priority: below every real thread.
    pub const IDLE: Priority = Priority(0);
    /// Lowest priority of an ordinary kernel thread.
    pub const MIN_KTHREAD: Priority = Priority(1);
    /// Default priority for kernel threads.
    pub const KTHREAD: Priority = Priority(32);
    /// Lowest real-time kernel thread priority.
    pub const RT_BASE: Priority = Priority(64);
    /// Lowest soft-interrupt thread priority.
    pub const SOFTINT_BASE: Priority = Priority(96);
    /// Lowest hardware-interrupt thread priority.
    pub const INTR_BASE: Priority = Priority(112);
    /// The highest priority.
    pub const MAX: Priority = Priority((NPRI - 1) as u8);

    /// A priority from its number, or `None` if it is out of range.
    pub const fn new(value: u8) -> Option<Priority> {
        if (value as usize) < NPRI {
            Some(Priority(value))
        } else {
            None
        }
    }

    /// The number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The run-queue index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The scheduling priority of a thread that serves interrupt priority level `ipl` (`None`
    /// for `IPL_NONE`: ordinary threads keep their own). Soft levels map into the
    /// soft-interrupt band, hard levels into the interrupt band, four priorities apart, so
    /// that a level's order is its threads' order.
    pub const fn of_ipl(ipl: ipl::Ipl) -> Option<Priority> {
        use ipl::Ipl;
        let p = match ipl {
            Ipl::None => return None,
            Ipl::SoftClock => Self::SOFTINT_BASE.0,
            Ipl::SoftBio => Self::SOFTINT_BASE.0 + 4,
            Ipl::SoftNet => Self::SOFTINT_BASE.0 + 8,
            Ipl::SoftSerial => Self::SOFTINT_BASE.0 + 12,
            Ipl::Vm => Self::INTR_BASE.0,
            Ipl::Sched => Self::INTR_BASE.0 + 8,
            Ipl::High => Self::INTR_BASE.0 + 12,
        };
        Priority::new(p)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_ordered_and_in_range() {
        assert!(Priority::IDLE < Priority::MIN_KTHREAD);
        assert!(Priority::KTHREAD < Priority::RT_BASE);
        assert!(Priority::RT_BASE < Priority::SOFTINT_BASE);
        assert!(Priority::SOFTINT_BASE < Priority::INTR_BASE);
        assert!(Priority::INTR_BASE <= Priority::MAX);
        assert_eq!(Priority::MAX.index(), NPRI - 1);
        assert_eq!(Priority::new(NPRI as u8), None);
        assert_eq!(Priority::new(5).map(Priority::get), Some(5));
    }

    use ipl::{Ipl, ALL};

    #[test]
    fn levels_map_to_increasing_interrupt_priorities() {
        assert_eq!(Priority::of_ipl(Ipl::None), None);
        let mut last = Priority::KTHREAD;
        for &l in &ALL[1..] {
            let p = Priority::of_ipl(l).unwrap();
            assert!(p > last, "{l} maps to {p:?}, not above {last:?}");
            assert!(p >= Priority::SOFTINT_BASE);
            last = p;
        }
        assert!(Priority::of_ipl(Ipl::Vm).unwrap() >= Priority::INTR_BASE);
    }
}
