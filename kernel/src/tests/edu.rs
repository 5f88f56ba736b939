//! PCI and MSI on the real (emulated) bus with QEMU's `edu` device: the kernel finds it,
//! assigns BAR0 (qboot leaves it at 0), enables MSI; and every interrupt model handles each
//! device-raised MSI exactly once.

use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use intr::{FilterResult, IntrFlags, Model, SourceSpec};
use ipl::Ipl;
use ktest::{kassert, kassert_eq, ktest, TestResult};

use super::{ncpus, until};
use crate::drivers::edu::Edu;
use crate::intr::INTR;
use crate::SCHED;

/// First of the vectors these tests use (0xA0..0xAF).
const VECTOR_BASE: u8 = 0xA0;

fn probe() -> Result<Edu, String> {
    Edu::probe().ok_or_else(|| String::from("edu device not present (host tool adds -device edu)"))
}

/// The device is found on bus 0, BAR0 is assigned (by firmware or by us) and decodes (the
/// identification and liveness registers answer), and MSI can be enabled.
fn found_bar0_msi() -> TestResult {
    let edu = probe()?;
    let f = edu.function();
    let bar0 = *f.bar(0).ok_or("edu: no BAR0")?;
    kassert!(bar0.base != 0, "edu: BAR0 unassigned");
    kassert_eq!(bar0.size, 1 << 20, "edu: BAR0 size");
    kassert_eq!(bar0.base % bar0.size, 0, "edu: BAR0 not naturally aligned");
    kassert_eq!(edu.regs().base() as u64, bar0.base);
    let id = edu.id();
    kassert_eq!(id & 0xFFFF, 0x00ED, "edu: identification register {id:#010x}");
    let (major, minor) = edu.version();
    kassert!(major >= 1, "edu: version {major}.{minor}");
    kassert_eq!(edu.liveness(0x1234_5678), !0x1234_5678u32, "edu: liveness register");
    let cpu = ncpus() - 1;
    edu.enable_msi(cpu, VECTOR_BASE + 0xF)?;
    let (addr, data, on) = edu.msi_state().ok_or("edu: no MSI capability")?;
    edu.disable_msi();
    kassert!(on, "edu: MSI enable bit");
    kassert_eq!(addr, 0xFEE0_0000 | (arch::cpu::lapic_id_of(cpu) as u64) << 12, "edu: MSI address");
    kassert_eq!(data, (VECTOR_BASE + 0xF) as u16, "edu: MSI data");
    arch::kprintln!(
        "edu at {} id={:#010x} bar0={:#x} (assigned {}) msi-cap ok",
        f.bdf,
        id,
        bar0.base,
        if bar0.assigned_here { "here" } else { "by firmware" }
    );
    Ok(())
}
ktest!(T_FOUND, "edu::pci::found_bar0_msi", found_bar0_msi);

/// 200 device-raised MSIs, one at a time, to the last CPU: each handled exactly once, in
/// every model; the filter reads and acknowledges the device's status.
fn msi_exactly_once_every_model() -> TestResult {
    let edu = probe()?;
    let cpu = ncpus() - 1;
    let names = ["edu.msi.direct", "edu.msi.dedicated", "edu.msi.pool", "edu.msi.pinned"];
    const N: u64 = 200;
    for (i, model) in Model::ALL.into_iter().enumerate() {
        let vector = VECTOR_BASE + i as u8;
        edu.ack(!0);
        let claimed = Arc::new(AtomicU64::new(0));
        let stray = Arc::new(AtomicU64::new(0));
        let handled = Arc::new(AtomicU64::new(0));
        let (c, s, h, dev) = (claimed.clone(), stray.clone(), handled.clone(), edu.clone());
        let handle = INTR
            .establish(
                SourceSpec {
                    name: names[i].into(),
                    vector,
                    ipl: Ipl::Vm,
                    flags: IntrFlags::MPSAFE,
                    model: Some(model),
                    thread_priority: None,
                },
                Some(alloc::boxed::Box::new(move |_| {
                    if !dev.claim() {
                        s.fetch_add(1, Ordering::SeqCst);
                        return FilterResult::Stray;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    FilterResult::Schedule
                })),
                Some(alloc::boxed::Box::new(move |_| {
                    h.fetch_add(1, Ordering::SeqCst);
                })),
            )
            .map_err(|e| alloc::format!("{e}"))?;
        edu.enable_msi(cpu, vector)?;
        for k in 0..N {
            edu.raise(1 << (k % 8));
            if !until(2000, || handled.load(Ordering::SeqCst) == k + 1) {
                edu.disable_msi();
                return Err(alloc::format!(
                    "{model}: MSI {k} to cpu {cpu} not handled in 2 s (handled {}, claimed {}, stray {}, \
                     status {:#x})",
                    handled.load(Ordering::SeqCst),
                    claimed.load(Ordering::SeqCst),
                    stray.load(Ordering::SeqCst),
                    edu.status()
                ));
            }
        }
        SCHED.sleep_ns(5_000_000);
        edu.disable_msi();
        kassert_eq!(handled.load(Ordering::SeqCst), N, "{model}: handled count");
        kassert_eq!(claimed.load(Ordering::SeqCst), N, "{model}: filter claims");
        kassert_eq!(stray.load(Ordering::SeqCst), 0, "{model}: stray interrupts");
        kassert_eq!(handle.source().stats.total(), N, "{model}: interrupts counted by the framework");
        kassert_eq!(edu.status(), 0, "{model}: status left set");
        drop(handle);
        kassert!(!INTR.has_sources(vector), "{model}: source still established after disestablish");
    }
    Ok(())
}
ktest!(T_ONCE, "edu::msi::exactly_once_every_model", msi_exactly_once_every_model);

/// First of the vectors the INTx test uses (0xB0..0xBF).
const INTX_VECTOR_BASE: u8 = 0xB0;

/// 200 device-raised INTx interrupts (level-triggered, active-high IOAPIC line), one at a
/// time, to the last CPU: each handled exactly once, in every model, with no strays (the line
/// is masked before the EOI, so an asserted line never re-delivers); the line is unmasked at
/// the end and masked again by disestablish.
fn intx_exactly_once_every_model() -> TestResult {
    let edu = probe()?;
    let cpu = ncpus() - 1;
    let names = ["edu.intx.direct", "edu.intx.dedicated", "edu.intx.pool", "edu.intx.pinned"];
    const N: u64 = 200;
    for (i, model) in Model::ALL.into_iter().enumerate() {
        let vector = INTX_VECTOR_BASE + i as u8;
        edu.ack(!0);
        let gsi = edu.program_intx(cpu, vector)?;
        kassert!(arch::ioapic::is_masked(gsi)?, "{model}: GSI {gsi} unmasked before establish");
        let line = crate::intr::IoApicLine::new(gsi, true).map_err(|e| alloc::format!("{e}"))?;
        let claimed = Arc::new(AtomicU64::new(0));
        let stray = Arc::new(AtomicU64::new(0));
        let handled = Arc::new(AtomicU64::new(0));
        let (c, s, h, dev) = (claimed.clone(), stray.clone(), handled.clone(), edu.clone());
        let handle = INTR
            .establish_line(
                SourceSpec {
                    name: names[i].into(),
                    vector,
                    ipl: Ipl::Vm,
                    flags: IntrFlags::MPSAFE,
                    model: Some(model),
                    thread_priority: None,
                },
                line,
                Some(alloc::boxed::Box::new(move |_| {
                    if !dev.claim() {
                        s.fetch_add(1, Ordering::SeqCst);
                        return FilterResult::Stray;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    FilterResult::Schedule
                })),
                Some(alloc::boxed::Box::new(move |_| {
                    h.fetch_add(1, Ordering::SeqCst);
                })),
            )
            .map_err(|e| alloc::format!("{e}"))?;
        for k in 0..N {
            edu.raise(1 << (k % 8));
            if !until(2000, || handled.load(Ordering::SeqCst) == k + 1) {
                drop(handle);
                edu.disable_intx();
                return Err(alloc::format!(
                    "{model}: INTx {k} (GSI {gsi}, entry {:x?}, pins {}, line/pin {:?}) to cpu {cpu} not \
                     handled in 2 s (handled {}, claimed {}, stray {}, status {:#x})",
                    arch::ioapic::entry(gsi),
                    arch::ioapic::pin_count(),
                    edu.function().interrupt_line_pin(),
                    handled.load(Ordering::SeqCst),
                    claimed.load(Ordering::SeqCst),
                    stray.load(Ordering::SeqCst),
                    edu.status()
                ));
            }
        }
        SCHED.sleep_ns(5_000_000);
        kassert_eq!(handled.load(Ordering::SeqCst), N, "{model}: handled count");
        kassert_eq!(claimed.load(Ordering::SeqCst), N, "{model}: filter claims");
        kassert_eq!(stray.load(Ordering::SeqCst), 0, "{model}: stray interrupts");
        kassert_eq!(handle.source().stats.total(), N, "{model}: interrupts counted by the framework");
        kassert_eq!(edu.status(), 0, "{model}: status left set");
        kassert!(!handle.source().is_masked(), "{model}: source still masked");
        kassert!(!arch::ioapic::is_masked(gsi)?, "{model}: GSI {gsi} masked while established");
        drop(handle);
        edu.disable_intx();
        kassert!(!INTR.has_sources(vector), "{model}: source still established after disestablish");
        kassert!(arch::ioapic::is_masked(gsi)?, "{model}: GSI {gsi} not masked after disestablish");
    }
    Ok(())
}
ktest!(T_INTX, "edu::intx::exactly_once_every_model", intx_exactly_once_every_model);

/// A level-triggered line that asserts while its CPU is at the line's IPL is held pending
/// (masked at the IOAPIC before the EOI, so it cannot re-deliver in a loop), and handled
/// exactly once after the `splx` that lowers the level; the line ends unmasked.
fn intx_deferred_by_spl_runs_once_after_splx() -> TestResult {
    let edu = probe()?;
    let cpu = ncpus() - 1;
    let vector = INTX_VECTOR_BASE + 8;
    SCHED.bind_current(Some(cpu));
    edu.ack(!0);
    let gsi = edu.program_intx(cpu, vector)?;
    let line = crate::intr::IoApicLine::new(gsi, true).map_err(|e| alloc::format!("{e}"))?;
    let handled = Arc::new(AtomicU64::new(0));
    let (h, dev) = (handled.clone(), edu.clone());
    let handle = INTR
        .establish_line(
            SourceSpec {
                name: "edu.intx.deferred".into(),
                vector,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(Model::Direct),
                thread_priority: None,
            },
            line,
            Some(alloc::boxed::Box::new(move |_| {
                if !dev.claim() {
                    return FilterResult::Stray;
                }
                h.fetch_add(1, Ordering::SeqCst);
                FilterResult::Handled
            })),
            None,
        )
        .map_err(|e| alloc::format!("{e}"))?;
    let s = crate::SPL.splraise(Ipl::Vm);
    edu.raise(1);
    let mut pending = false;
    for _ in 0..20_000_000 {
        if crate::SPL.is_pending(vector) {
            pending = true;
            break;
        }
        core::hint::spin_loop();
    }
    let early = handled.load(Ordering::SeqCst);
    let masked_while_pending = arch::ioapic::is_masked(gsi)?;
    crate::SPL.splx(s);
    let ok = until(2000, || handled.load(Ordering::SeqCst) == 1);
    SCHED.sleep_ns(5_000_000);
    let total = handled.load(Ordering::SeqCst);
    let unmasked_after = !arch::ioapic::is_masked(gsi)?;
    drop(handle);
    edu.disable_intx();
    SCHED.bind_current(None);
    kassert!(pending, "the INTx never arrived (or was not deferred) at IPL_VM");
    kassert_eq!(early, 0, "handled at or below its IPL");
    kassert!(masked_while_pending, "line not masked at the IOAPIC while pending");
    kassert!(ok, "not handled after splx");
    kassert_eq!(total, 1, "handled more than once");
    kassert!(unmasked_after, "line left masked after the replay");
    Ok(())
}
ktest!(
    T_INTX_DEFER,
    "edu::intx::deferred_by_spl_runs_once_after_splx",
    intx_deferred_by_spl_runs_once_after_splx
);

/// `edu`'s MSI capability has no per-vector mask, so its sources are masked in software, and
/// say so: each message the device sends while masked still interrupts, is counted as a
/// masked arrival on the CPU it came to and absorbed (no filter, no handler); the unmask
/// re-raises one, which the filter and the handler see once.
fn msi_masked_in_software_counts_arrivals() -> TestResult {
    let edu = probe()?;
    kassert!(
        crate::intr::MsiLine::new(edu.function()).is_none(),
        "edu's MSI now has a per-vector mask: mask it in hardware"
    );
    let cpu = ncpus() - 1;
    let vector = VECTOR_BASE + 8;
    edu.ack(!0);
    let (claimed, handled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, h, dev) = (claimed.clone(), handled.clone(), edu.clone());
    let handle = INTR
        .establish(
            SourceSpec {
                name: "edu.msi.masked".into(),
                vector,
                ipl: Ipl::Vm,
                flags: IntrFlags::MPSAFE,
                model: Some(Model::Direct),
                thread_priority: None,
            },
            Some(alloc::boxed::Box::new(move |_| {
                if !dev.claim() {
                    return FilterResult::Stray;
                }
                c.fetch_add(1, Ordering::SeqCst);
                FilterResult::Schedule
            })),
            Some(alloc::boxed::Box::new(move |_| {
                h.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .map_err(|e| alloc::format!("{e}"))?;
    kassert_eq!(handle.source().mask_method(), intr::SOFTWARE_MASK, "edu MSI: mask method");
    edu.enable_msi(cpu, vector)?;
    handle.mask();
    const K: u64 = 8;
    let t = 2000; // ms for up to 2 CPUs; `until` scales it
    let stats = &handle.source().stats;
    let mut arrived = true;
    for k in 0..K {
        edu.raise(1 << (k % 8));
        // Synchronising: each message is counted when it arrives, before the next is sent.
        if !until(t, || stats.masked_total() == k + 1) {
            arrived = false;
            break;
        }
    }
    let on_cpu = stats.masked_arrivals[cpu].load(Ordering::SeqCst);
    let (claimed_masked, handled_masked) = (claimed.load(Ordering::SeqCst), handled.load(Ordering::SeqCst));
    let unmasked = handle.unmask().is_ok();
    let ran = until(t, || handled.load(Ordering::SeqCst) == 1);
    // The re-raise is one interrupt: nothing else may follow it.
    let settled = until(t, || edu.status() == 0);
    edu.disable_msi();
    kassert!(
        arrived,
        "{} of {K} messages arrived while masked within {t} ms (scaled with the CPU count)",
        stats.masked_total()
    );
    kassert_eq!(on_cpu, K, "masked arrivals counted on cpu {cpu}");
    kassert_eq!((claimed_masked, handled_masked), (0, 0), "the filter or handler ran while masked");
    kassert!(unmasked, "unmask: no mask reference held");
    kassert!(ran, "the unmask did not re-raise the absorbed interrupt");
    kassert!(settled, "status left set after the re-raise");
    kassert_eq!(claimed.load(Ordering::SeqCst), 1, "the re-raise was filtered more than once");
    kassert_eq!(handled.load(Ordering::SeqCst), 1, "the re-raise was handled more than once");
    drop(handle);
    Ok(())
}
ktest!(T_MSI_MASKED, "edu::msi::masked_in_software_counts_arrivals", msi_masked_in_software_counts_arrivals);
