//! The baselines every other figure is compared with, measured in the same boot:
//! the measurement loop itself, a classic `pushf; cli` spinlock, a bare `lock cmpxchg` pair.
//! The instruction sequences are inline assembly in `arch::bench_prims`.

use core::sync::atomic::{AtomicU32, Ordering};

use arch::bench_prims::{cli_spin_enter, cli_spin_exit, lock_cmpxchg_acquire, lock_cmpxchg_release};
use kbench::{kbench, Bencher};

kbench!(B_EMPTY, kbench::EMPTY, kbench::empty);

/// `pushf; pop; cli; lock cmpxchg` … `mov; push; popf`, uncontended.
fn cli_spinlock_enter_exit(b: &mut Bencher) {
    let lock = AtomicU32::new(0);
    b.iter(|| {
        let flags = cli_spin_enter(&lock);
        cli_spin_exit(&lock, flags);
    });
    assert_eq!(lock.load(Ordering::Relaxed), 0, "cli spinlock left held");
}
kbench!(B_CLI_SPINLOCK, "baseline.cli_spinlock.enter_exit", cli_spinlock_enter_exit);

/// Two `lock cmpxchg` on one word: acquire 0 → 1, release 1 → 0.
fn lock_cmpxchg_pair(b: &mut Bencher) {
    let word = AtomicU32::new(0);
    b.iter(|| {
        lock_cmpxchg_acquire(&word);
        lock_cmpxchg_release(&word);
    });
    assert_eq!(word.load(Ordering::Relaxed), 0, "lock cmpxchg pair left the word held");
}
kbench!(B_CMPXCHG_PAIR, "baseline.lock_cmpxchg_pair", lock_cmpxchg_pair);
