//! virtio-blk under real interrupts (`dev::blk::*`: need `-device virtio-blk-pci`, see
//! `tests/devices.rs`; they fail without it and are not in the default suite).
//!
//! Threads on every CPU write a pattern across many blocks and read it back, all at once, so
//! many requests are outstanding and every requester sleeps until the completion interrupt
//! wakes it; once under every dispatch model.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use intr::Model;
use ktest::{kassert, kassert_eq, ktest, TestResult};
use sched::Priority;

use super::{ncpus, until};
use crate::drivers::virtio::blk::{self, BlkDev, MAX_BYTES, SECTOR};
use crate::locks::Mutex;
use crate::SCHED;

/// Threads per CPU.
const THREADS_PER_CPU: usize = 3;
/// Sectors each thread owns.
const SECTORS_PER_THREAD: u64 = 96;

/// Byte `i` of sector `sector` as written in round `round`.
pub fn pattern(sector: u64, round: u64, i: usize) -> u8 {
    let x = (sector as u32).wrapping_mul(0x2545_F491) ^ (round as u32).wrapping_mul(0x9E37_79B9) ^ i as u32;
    (x ^ x >> 13) as u8 ^ (i >> 8) as u8
}

/// Request length in sectors (1..=8) of the request starting at `sector`.
pub(crate) fn sectors_at(sector: u64) -> u64 {
    1 + (sector.wrapping_mul(7) >> 2) % (MAX_BYTES / SECTOR) as u64
}

/// Writes then reads back and verifies `[first, first + n)` in requests of varying sizes.
pub fn write_verify(dev: &BlkDev, first: u64, n: u64, round: u64) -> Result<(), String> {
    let mut buf = vec![0u8; MAX_BYTES];
    for pass in 0..2 {
        let mut s = first;
        while s < first + n {
            let k = sectors_at(s).min(first + n - s);
            let len = k as usize * SECTOR;
            if pass == 0 {
                for (i, b) in buf[..len].iter_mut().enumerate() {
                    *b = pattern(s + (i / SECTOR) as u64, round, i % SECTOR);
                }
                dev.write(s, &buf[..len]).map_err(|e| format!("write of {k} sectors at {s}: {e}"))?;
            } else {
                buf[..len].fill(0xA5);
                dev.read(s, &mut buf[..len]).map_err(|e| format!("read of {k} sectors at {s}: {e}"))?;
                for (i, &b) in buf[..len].iter().enumerate() {
                    let want = pattern(s + (i / SECTOR) as u64, round, i % SECTOR);
                    if b != want {
                        dev.note_bad();
                        return Err(format!(
                            "sector {} byte {}: read {b:#04x}, wrote {want:#04x} (round {round})",
                            s + (i / SECTOR) as u64,
                            i % SECTOR
                        ));
                    }
                }
            }
            s += k;
        }
    }
    Ok(())
}

/// Starts the device (its absence is a failure naming it).
pub fn device() -> Result<&'static BlkDev, String> {
    Ok(blk::start(None)?)
}

/// Runs `THREADS_PER_CPU` threads bound to each CPU, each writing and verifying its own
/// `SECTORS_PER_THREAD` sectors from `base`; returns the first error.
fn all_cpus(dev: &'static BlkDev, base: u64, round: u64) -> Result<(), String> {
    let err: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new_adaptive("test.blk.err", None));
    let mut handles = Vec::new();
    for cpu in 0..ncpus() {
        for k in 0..THREADS_PER_CPU {
            let idx = (cpu * THREADS_PER_CPU + k) as u64;
            let first = base + idx * SECTORS_PER_THREAD;
            let e = err.clone();
            handles.push(SCHED.spawn("blk-tester", Priority::KTHREAD, Some(cpu), move || {
                if let Err(m) = write_verify(dev, first, SECTORS_PER_THREAD, round) {
                    e.lock().get_or_insert(format!("cpu {cpu} thread {k}: {m}"));
                }
            }));
        }
    }
    for h in handles {
        h.join();
    }
    let e = err.lock().take();
    match e {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

/// Write-then-read-back of a pattern across many blocks, concurrently from threads on every
/// CPU, under every dispatch model (the completion source re-established for each).
fn pattern_every_cpu_every_model() -> TestResult {
    let dev = device()?;
    let nthreads = (ncpus() * THREADS_PER_CPU) as u64;
    kassert!(
        dev.capacity() >= nthreads * SECTORS_PER_THREAD * 4,
        "{}: disk of {} sectors too small",
        blk::NAME,
        dev.capacity()
    );
    for (round, model) in Model::ALL.into_iter().enumerate() {
        dev.set_model(Some(model))?;
        kassert_eq!(dev.model(), model, "completion source model");
        let before = blk::stats();
        let handled0 = dev.source_handled();
        // Each model writes its own quarter of the test area, with its own round number.
        let base = round as u64 * nthreads * SECTORS_PER_THREAD;
        all_cpus(dev, base, round as u64 + 1).map_err(|e| format!("{model}: {e}"))?;
        let after = blk::stats();
        let ops = after.ops - before.ops;
        kassert!(ops >= 2 * nthreads, "{model}: only {ops} requests completed");
        kassert_eq!(after.errors, before.errors, "{model}: device errors");
        kassert_eq!(after.bad, 0, "{model}: data mismatches");
        kassert!(
            dev.source_handled() > handled0,
            "{model}: no completion interrupt counted on {}",
            blk::NAME
        );
        arch::kprintln!(
            "{}: model={model} ops={ops} bytes={} max_outstanding={} lat_p50={}us lat_p99={}us done_p99={}us",
            blk::NAME,
            after.bytes - before.bytes,
            after.max_outstanding,
            after.lat_p50_ns / 1000,
            after.lat_p99_ns / 1000,
            after.done_p99_ns / 1000
        );
    }
    let st = blk::stats();
    kassert!(st.max_outstanding >= 2, "requests never overlapped (max outstanding {})", st.max_outstanding);
    Ok(())
}
ktest!(T_PATTERN, "dev::blk::pattern_every_cpu_every_model", pattern_every_cpu_every_model);

/// Requests the device must refuse are refused before they reach it, naming the device.
fn bad_requests_refused() -> TestResult {
    let dev = device()?;
    let mut b = [0u8; SECTOR];
    let e = dev.read(dev.capacity(), &mut b).expect_err("read past the end");
    kassert!(format!("{e}").contains(blk::NAME), "error does not name the device: {e}");
    kassert!(dev.read(0, &mut b[..100]).is_err(), "a partial sector was accepted");
    Ok(())
}
ktest!(T_BAD, "dev::blk::bad_requests_refused", bad_requests_refused);

/// Masking the completion source masks its MSI-X entry in the device: a request completed
/// while masked sets the entry's pending bit instead of interrupting (no arrival while masked,
/// the reader stays asleep), and the unmask delivers it (the reader wakes with its data).
fn masked_in_hardware() -> TestResult {
    let dev = device()?;
    let sector = dev.capacity() - 1; // the last sector: no other test writes it
    write_verify(dev, sector, 1, 7)?; // it holds a known pattern
                                      // The last completion's handler instance drops its mask reference after it woke us.
    let t = 2000; // ms for up to 2 CPUs; `until` scales it
    kassert!(until(t, || !dev.line().is_masked()), "the entry stays masked with nothing queued");
    let arrivals0 = dev.masked_arrivals();
    kassert!(dev.mask_source(), "the completion source is not established");
    kassert!(dev.line().is_masked(), "masking the source did not set the entry's mask bit");
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let reader = SCHED.spawn("blk-masked-reader", Priority::KTHREAD, None, move || {
        let mut buf = [0u8; 512];
        let r = dev.read(sector, &mut buf);
        d.store(
            r.is_ok() && buf.iter().enumerate().all(|(i, &b)| b == pattern(sector, 7, i)),
            Ordering::SeqCst,
        );
    });
    // Synchronising on the device: the completion is held as the entry's pending bit.
    let pending = until(t, || dev.line().is_pending());
    let early = done.load(Ordering::SeqCst);
    let arrivals = dev.masked_arrivals() - arrivals0;
    kassert!(dev.unmask_source(), "unmask: no mask reference held");
    let finished = until(t, || done.load(Ordering::SeqCst));
    reader.join();
    kassert!(
        pending,
        "the completion did not set the entry's pending bit within {t} ms (scaled with the CPU count)"
    );
    kassert!(!early, "the reader woke while the source was masked");
    kassert_eq!(arrivals, 0, "the device interrupted while its entry was masked");
    kassert!(finished, "the read did not complete (with its data) after the unmask");
    kassert!(!dev.line().is_pending(), "the pending bit outlived the unmask");
    Ok(())
}
ktest!(T_MASKED, "dev::blk::masked_in_hardware", masked_in_hardware);
