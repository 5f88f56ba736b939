//! Host benchmarks: the kernel's adaptive mutex against `parking_lot::Mutex` and
//! `std::sync::Mutex`, uncontended (lock + increment + unlock on one thread) and contended
//! (2 and 4 threads hammering one mutex, one per simulated CPU).
//!
//! Run: `cargo bench -p ithreads-sync --bench mutex` (about 40 s; `-- --quick` is shorter).
//!
//! The adaptive mutex reads the current thread, so every measurement runs inside kernel
//! threads of a booted [`HostSystem`]: persistent workers, one bound to each simulated CPU,
//! that take timed jobs from a channel. The other two mutexes run in the same workers, so the
//! three are measured the same way. A worker waits for its next job in a std channel,
//! holding its simulated CPU (nothing else needs it). Contended: each of the `n` workers
//! does `iters / n` lock/increment/unlock rounds after a common barrier; the time is the
//! slowest worker's, so the figure is time per operation of the whole group.
//!
//! What the adaptive fast path costs on the host beyond `parking_lot`'s one `cmpxchg` per
//! lock and unlock: `HostMachine::curthread` and `HostEnv::sync` are each a thread-local
//! read of the calling OS thread's system and CPU plus a table index (on x86_64 they are
//! one `%gs`-relative load each), done on lock (flags + owner) and on unlock (flags +
//! owner). And the adaptive spin waits with `HostMachine::relax`, which is
//! `std::thread::yield_now` (a system call), where `parking_lot` spins with `pause`.

use std::hint::black_box;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use host_machine::{HostSystem, Mutex as KernelMutex};
use sched::Priority;

type Job = Box<dyn FnOnce() -> Duration + Send>;

/// Kernel threads bound to CPUs `0..n` that run timed jobs.
struct Workers {
    _sys: HostSystem,
    jobs: Vec<Sender<Job>>,
    done: Receiver<Duration>,
}

impl Workers {
    fn new(n: usize) -> Workers {
        let sys = HostSystem::boot(n);
        let (done_tx, done) = channel();
        let mut jobs = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..n {
            let (tx, rx) = channel::<Job>();
            jobs.push(tx);
            rxs.push(rx);
        }
        sys.run(move |sched| {
            for (cpu, rx) in rxs.into_iter().enumerate() {
                let done_tx = done_tx.clone();
                sched.spawn(&format!("bench{cpu}"), Priority::KTHREAD, Some(cpu), move || {
                    while let Ok(job) = rx.recv() {
                        if done_tx.send(job()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Workers { _sys: sys, jobs, done }
    }

    /// Runs `make(i)` on worker `i` for every worker; returns the longest time.
    fn run(&self, make: impl Fn(usize) -> Job) -> Duration {
        for (i, tx) in self.jobs.iter().enumerate() {
            tx.send(make(i)).expect("bench worker gone");
        }
        (0..self.jobs.len())
            .map(|_| self.done.recv_timeout(Duration::from_secs(60)).expect("bench worker hung"))
            .max()
            .unwrap_or_default()
    }
}

/// The three mutexes behind one face: lock, add one, unlock.
trait Bump: Send + Sync + 'static {
    fn new() -> Self;
    fn bump(&self);
}

struct Adaptive(KernelMutex<u64>);
struct ParkingLot(parking_lot::Mutex<u64>);
struct Std(std::sync::Mutex<u64>);

impl Bump for Adaptive {
    fn new() -> Self {
        Adaptive(KernelMutex::new_adaptive("bench mutex", 0))
    }
    #[inline]
    fn bump(&self) {
        *self.0.lock() += 1;
    }
}

impl Bump for ParkingLot {
    fn new() -> Self {
        ParkingLot(parking_lot::Mutex::new(0))
    }
    #[inline]
    fn bump(&self) {
        *self.0.lock() += 1;
    }
}

impl Bump for Std {
    fn new() -> Self {
        Std(std::sync::Mutex::new(0))
    }
    #[inline]
    fn bump(&self) {
        *self.0.lock().unwrap() += 1;
    }
}

/// `iters` rounds split over the workers, after a barrier.
fn contended<B: Bump>(w: &Workers, iters: u64) -> Duration {
    let n = w.jobs.len();
    let m = Arc::new(B::new());
    let barrier = Arc::new(Barrier::new(n));
    let per = (iters / n as u64).max(1);
    w.run(|_| {
        let (m, barrier) = (m.clone(), barrier.clone());
        Box::new(move || {
            barrier.wait();
            let t = Instant::now();
            for _ in 0..per {
                black_box(&*m).bump();
            }
            t.elapsed()
        })
    })
}

fn uncontended(c: &mut Criterion) {
    let w = Workers::new(1);
    let mut g = c.benchmark_group("uncontended");
    g.bench_function("adaptive", |b| b.iter_custom(|iters| contended::<Adaptive>(&w, iters)));
    g.bench_function("parking_lot", |b| b.iter_custom(|iters| contended::<ParkingLot>(&w, iters)));
    g.bench_function("std", |b| b.iter_custom(|iters| contended::<Std>(&w, iters)));
    g.finish();
}

fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended");
    for n in [2, 4] {
        let w = Workers::new(n);
        g.bench_with_input(BenchmarkId::new("adaptive", n), &n, |b, _| {
            b.iter_custom(|iters| contended::<Adaptive>(&w, iters))
        });
        g.bench_with_input(BenchmarkId::new("parking_lot", n), &n, |b, _| {
            b.iter_custom(|iters| contended::<ParkingLot>(&w, iters))
        });
        g.bench_with_input(BenchmarkId::new("std", n), &n, |b, _| {
            b.iter_custom(|iters| contended::<Std>(&w, iters))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = uncontended, contention
}
criterion_main!(benches);
