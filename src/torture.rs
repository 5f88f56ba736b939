//! Torture boots (`ithreads torture`): `run=torture` once per interrupt dispatch model under
//! TCG `-icount shift=0` (one guest second is 10^9 guest instructions, shared by every vCPU;
//! with no host input the run is deterministic from the seed), the kernel's `@@ torture-…`
//! lines (kernel/src/torture/mod.rs, docs/PROTOCOL.md) and the verdict.
//!
//! With [`Sources::All`] the boot also gets the main job's host devices
//! ([`workload::host_devices`]: the NIC's stream peer and a disk image) and its serial feeder
//! ([`workload::feeder`]: frames for every `@@ net-ready`, the next paste lines for every
//! `@@ serial-ready lines=<k>`); the kernel finds the devices and drives them too
//! (kernel/src/torture/host.rs). Those boots run under [`ICOUNT_HOST`].

use std::sync::Arc;
use std::time::Duration;

use crate::bench::ICOUNT;
use crate::qemu::{self, Accel, BootConfig, BootReport};
use crate::workload::{self, Devices, HostCounters, Model, Plan};

/// Which interrupt sources a torture boot drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// Only guest-generated ones: deterministic from the seed.
    Guest,
    /// The guest's, and the host-driven NIC, disk and COM1 input.
    All,
}

/// `-icount` of a boot with host sources: `sleep=on`, so that while every vCPU waits for the
/// host (a disk completion, frames, typed lines) the guest clock follows the host's instead of
/// jumping to the next timer — the kernel's waits for host traffic are in guest time.
pub const ICOUNT_HOST: &str = "shift=0,align=off,sleep=on";

/// No whole paste: in a `--sources all` boot the host types COM1's lines in the bursts the
/// kernel asks for (`@@ serial-ready lines=<k>`).
const PLAN: Plan = Plan { serial_lines: 0 };

/// The host's side of a [`Sources::All`] boot, alive as long as the boot.
pub struct HostSide {
    /// The NIC peer, the disk image and their QEMU arguments.
    pub devices: Devices,
    /// What the host sent.
    pub counters: Arc<HostCounters>,
}

impl HostSide {
    /// What the host sent, for the report.
    pub fn sent(&self) -> workload::HostTraffic {
        self.counters.snapshot(&PLAN, self.devices.net.as_deref())
    }
}

/// A torture boot with host sources: [`config`] plus the host's devices and serial feeder.
pub fn config_with_host(
    smp: u32,
    model: Model,
    seconds: u64,
    seed: u64,
    timeout: Duration,
) -> std::io::Result<(BootConfig, HostSide)> {
    let mut cfg = config(smp, model, seconds, seed, timeout);
    // CPUs that wait for the host halt (`idle=halt`): the clock then follows the host's.
    cfg.append = append(model, seconds, seed);
    let devices = workload::host_devices()?;
    let counters = Arc::new(HostCounters::default());
    cfg.extra_args = vec!["-icount".to_string(), ICOUNT_HOST.to_string()];
    cfg.extra_args.extend(devices.qemu_args.iter().cloned());
    cfg.input = workload::feeder(PLAN, devices.net.clone(), Arc::clone(&counters));
    Ok((cfg, HostSide { devices, counters }))
}

fn append(model: Model, seconds: u64, seed: u64) -> String {
    format!("run=torture intr.model={} torture.seed={seed} torture.ms={}", model.as_str(), seconds * 1000)
}

/// A guest-source torture boot of `model` on `smp` CPUs for `seconds` guest seconds from
/// `seed`. Its idle CPUs poll (`idle=poll`): with no vCPU ever halted, QEMU never warps the
/// virtual clock, and a warp computed by QEMU's main loop just after one vCPU's `hlt`, before
/// that vCPU's instructions are counted, is the way host timing reached these runs
/// (docs/logs/torture-determinism-4242-2026-12-06-late.txt).
pub fn config(smp: u32, model: Model, seconds: u64, seed: u64, timeout: Duration) -> BootConfig {
    BootConfig {
        smp,
        accel: Some(Accel::Tcg),
        append: format!("{} idle=poll", append(model, seconds, seed)),
        extra_args: vec!["-icount".to_string(), ICOUNT.to_string()],
        timeout,
        input: Default::default(),
    }
}

/// The value of `key` in a `key=value ...` protocol line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn number(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

/// `@@ torture-progress model=<m> ms=<guest ms> interrupts=<n> rate=<per guest s> violations=<v>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Guest milliseconds since the load started.
    pub ms: u64,
    /// Deliveries so far.
    pub interrupts: u64,
    /// Deliveries in the last guest second.
    pub rate: u64,
    /// Violations so far.
    pub violations: u64,
}

/// Parses a progress line.
pub fn progress(line: &str) -> Option<Progress> {
    let rest = line.strip_prefix("@@ torture-progress ")?;
    Some(Progress {
        ms: number(rest, "ms")?,
        interrupts: number(rest, "interrupts")?,
        rate: number(rest, "rate")?,
        violations: number(rest, "violations")?,
    })
}

/// `@@ torture-summary ...`: one model's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Raises by the guest's threads.
    pub raised: u64,
    /// Raises merged into one in flight.
    pub merged: u64,
    /// Deliveries (each source's first stage).
    pub delivered: u64,
    /// Handler runs (hwi_sched reruns included).
    pub handled: u64,
    /// Hash of the delivery sequence.
    pub hash: String,
    /// Heap in use after the warm-up, bytes.
    pub heap_base: u64,
    /// Heap in use after teardown, bytes.
    pub heap_end: u64,
    /// Clock interrupts (every CPU's LAPIC timer; 0 from a kernel that does not count them).
    pub timer_delivered: u64,
    /// Interrupts of the host-driven sources (0 without them).
    pub host_interrupts: u64,
    /// Times the monitor was kept from its CPU for 100 ms (`why=monitor-cpu` reports; not a
    /// violation; 0 from a kernel that does not count them).
    pub monitor_idle: u64,
    /// Violations the kernel counted.
    pub violations: u64,
}

/// Parses a summary line.
pub fn summary(line: &str) -> Option<Summary> {
    let rest = line.strip_prefix("@@ torture-summary ")?;
    Some(Summary {
        raised: number(rest, "raised")?,
        merged: number(rest, "merged")?,
        delivered: number(rest, "delivered")?,
        handled: number(rest, "handled")?,
        hash: field(rest, "hash")?.to_string(),
        heap_base: number(rest, "heap_base")?,
        heap_end: number(rest, "heap_end")?,
        timer_delivered: number(rest, "timer_delivered").unwrap_or(0),
        host_interrupts: number(rest, "host_interrupts").unwrap_or(0),
        monitor_idle: number(rest, "monitor_idle").unwrap_or(0),
        violations: number(rest, "violations")?,
    })
}

/// `@@ torture-stall ... frames=<hex>,<hex>,...`: a stalled CPU's return addresses
/// (innermost first, the interrupted instruction first of all), to symbolize.
pub fn stall_frames(line: &str) -> Option<Vec<u64>> {
    let rest = line.strip_prefix("@@ torture-stall ")?;
    let frames = rest.split_whitespace().find_map(|kv| kv.strip_prefix("frames="))?;
    frames.split(',').map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).collect()
}

/// `@@ torture-host-source ...`: a host-driven source's counts (shown as they are).
pub fn host_source(line: &str) -> Option<&str> {
    line.strip_prefix("@@ torture-host-source ")
}

/// A violation line, as the host prints it: `what=… source=… cpu=… seed=…` (the model too).
pub fn violation(line: &str) -> Option<&str> {
    line.strip_prefix("@@ torture-violation ")
}

/// One model's boot, judged.
#[derive(Debug, Clone)]
pub struct ModelResult {
    /// The model.
    pub model: Model,
    /// The kernel's summary, if it printed one.
    pub summary: Option<Summary>,
    /// Violations: the kernel's, plus one if the boot did not end cleanly with a summary.
    pub violations: u64,
    /// Why the boot itself failed (panic, hang, exit status), if it did.
    pub boot_failure: Option<String>,
    /// Wall time of the boot.
    pub elapsed: Duration,
}

/// Judges a torture boot: the summary's violations, and one more if the kernel did not exit
/// successfully after printing its summary (a panic — the lock checker's included —, a hang
/// or a missing summary).
pub fn judge(model: Model, report: &BootReport) -> ModelResult {
    let summary = report.serial_log.iter().rev().find_map(|l| summary(l));
    let mut violations = summary.as_ref().map_or(0, |s| s.violations);
    // A failed exit after a summary with violations is those violations; otherwise the boot
    // itself is one.
    let boot_failure = if summary.is_none() || (!report.exited_success() && violations == 0) {
        violations += 1;
        Some(format!(
            "{} ({})",
            report.outcome,
            if summary.is_none() { "no summary" } else { "after the summary" }
        ))
    } else {
        None
    };
    ModelResult { model, summary, violations, boot_failure, elapsed: report.elapsed }
}

/// The host tool's last line: `torture: N interrupts, V violations` (N: the guest sources'
/// deliveries, the clock interrupts and the host sources' interrupts).
pub fn last_line(results: &[ModelResult]) -> String {
    let n: u64 = results
        .iter()
        .filter_map(|r| r.summary.as_ref())
        .map(|s| s.delivered + s.timer_delivered + s.host_interrupts)
        .sum();
    let v: u64 = results.iter().map(|r| r.violations).sum();
    format!("torture: {n} interrupts, {v} violations")
}

/// A text progress bar of `width` cells for `done` of `total`.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled =
        if total == 0 { width } else { ((done.min(total) as u128 * width as u128) / total as u128) as usize };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// The QEMU command of a torture boot (for the log).
pub fn command(cfg: &BootConfig, kernel: &std::path::Path) -> String {
    format!("{} {}", qemu::QEMU, qemu::shell_words(&qemu::qemu_args(cfg, Accel::Tcg, kernel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_lines() {
        let p = progress("@@ torture-progress model=pool ms=1003 interrupts=7658 rate=7658 violations=0")
            .unwrap();
        assert_eq!(p, Progress { ms: 1003, interrupts: 7658, rate: 7658, violations: 0 });
        let s = summary(
            "@@ torture-summary model=pool cpus=2 seed=1 ms=1000 raised=33465 merged=25806 delivered=7659 \
             handled=6046 hash=67e2b7d4970a4300 heap_base=687648 heap_end=430848 threads_base=16 \
             threads_end=9 violations=0",
        )
        .unwrap();
        assert_eq!((s.raised, s.merged, s.delivered, s.handled), (33465, 25806, 7659, 6046));
        assert_eq!(s.hash, "67e2b7d4970a4300");
        assert_eq!(s.violations, 0);
        assert!(summary("@@ torture-summary model=pool").is_none());
        assert_eq!(
            stall_frames(
                "@@ torture-stall model=direct cpu=3 why=heartbeat rip=0x2000 if=0 frames=0x2000,0x1f00"
            ),
            Some(vec![0x2000, 0x1f00])
        );
        assert_eq!(stall_frames("@@ torture-stall model=direct cpu=3 why=heartbeat snapshot=none"), None);
        assert_eq!(stall_frames("@@ torture-stall model=direct cpu=3 frames=0x20,zz"), None);
        assert_eq!(
            violation("@@ torture-violation model=direct what=lost source=torture.mwq cpu=1 seed=3"),
            Some("model=direct what=lost source=torture.mwq cpu=1 seed=3")
        );
    }

    #[test]
    fn the_last_line_and_the_bar() {
        assert_eq!(last_line(&[]), "torture: 0 interrupts, 0 violations");
        assert_eq!(bar(1, 4, 8), "[##......]");
        assert_eq!(bar(9, 4, 4), "[####]");
        let cfg = config(2, Model::Pinned, 3, 42, Duration::from_secs(1));
        assert_eq!(cfg.append, "run=torture intr.model=pinned torture.seed=42 torture.ms=3000 idle=poll");
        assert!(cfg.extra_args.contains(&"-icount".to_string()));
    }
}
