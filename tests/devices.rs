//! Boots the real kernel with a virtio disk and a virtio NIC attached to a host UDP peer,
//! drives the NIC's traffic from the host, and checks the kernel's `dev::*` test results.
//!
//! The NIC traffic follows the guest: a serial feeder waits for each
//! `@@ net-ready first=.. count=.. echo=.. rate=..` line and sends what it asks for
//! (`ithreads::traffic`).

use std::sync::Arc;
use std::time::Duration;

use ithreads::harness::{self, judge_suite_boot};
use ithreads::protocol::Event;
use ithreads::qemu::{self, BootConfig, BootReport, SerialInput};
use ithreads::traffic::{DiskImage, NetPeer, NetRequest};

const TIMEOUT: Duration = Duration::from_secs(240);

/// One QEMU at a time (the guest's timing matters, and the host has few cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tail(r: &BootReport) -> String {
    harness::report_tail(r, harness::TAIL_LINES)
}

/// A feeder that answers every `@@ net-ready` line with the traffic it asks for.
fn serve_net(peer: Arc<NetPeer>) -> SerialInput {
    SerialInput::feeder(move |stdin, events| {
        let _stdin = stdin; // QEMU's serial input stays open for the whole boot
        for e in events {
            if let Event::Unknown(line) = e {
                if let Some(req) = NetRequest::parse(&line) {
                    peer.serve(&req).unwrap_or_else(|e| panic!("sending {req:?}: {e}"));
                }
            }
        }
    })
}

/// Boots with `filter` selecting `dev::` tests on `smp` CPUs and the given devices; asserts
/// that every selected test passed and that `expect` tests ran.
fn run(
    smp: u32,
    filter: &str,
    disk: Option<&DiskImage>,
    net: Option<Arc<NetPeer>>,
    expect: &[&str],
) -> BootReport {
    let mut cfg = BootConfig::new(smp, format!("run=tests test.filter={filter}")).with_timeout(TIMEOUT);
    if let Some(d) = disk {
        cfg.extra_args.extend(d.qemu_args());
    }
    if let Some(p) = &net {
        cfg.extra_args.extend(p.qemu_args());
        cfg.input = serve_net(p.clone());
    }
    let r = {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"))
    };
    if std::env::var_os("ITHREADS_SHOW_SERIAL").is_some() {
        for l in &r.serial_log {
            eprintln!("  | {l}");
        }
    }
    let v = judge_suite_boot(&r);
    let why = format!("{}\n{}", v.failure_text(), tail(&r));
    assert_eq!(r.exit_code(), Some(qemu::EXIT_SUCCESS), "{why}");
    assert_eq!(v.failed(), 0, "{why}");
    for name in expect {
        assert!(
            r.events.iter().any(|e| matches!(e, Event::Test { name: n, pass: true, .. } if n == name)),
            "test {name} did not pass\n{why}"
        );
    }
    r
}

#[test]
fn blk_pattern_smp1() {
    let disk = DiskImage::create(16).expect("disk image");
    run(
        1,
        "dev::blk::",
        Some(&disk),
        None,
        &[
            "dev::blk::pattern_every_cpu_every_model",
            "dev::blk::bad_requests_refused",
            "dev::blk::masked_in_hardware",
        ],
    );
}

#[test]
fn blk_pattern_smp4() {
    let disk = DiskImage::create(16).expect("disk image");
    run(
        4,
        "dev::blk::",
        Some(&disk),
        None,
        &["dev::blk::pattern_every_cpu_every_model", "dev::blk::masked_in_hardware"],
    );
}

#[test]
fn net_in_order_smp2() {
    let peer = Arc::new(NetPeer::new().expect("UDP peer"));
    run(2, "dev::net::", None, Some(peer.clone()), &["dev::net::in_order_every_model"]);
    // The guest echoed every frame of the 4 phases; the host verified them.
    let want = 4 * 600;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while peer.echoes().received < want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = peer.echoes();
    assert_eq!(e.bad, 0, "bad echoes: {e:?}");
    assert_eq!(e.received, want, "echoes: {e:?}");
}

#[test]
fn flood_and_disk_smp1() {
    let disk = DiskImage::create(16).expect("disk image");
    let peer = Arc::new(NetPeer::new().expect("UDP peer"));
    run(1, "dev::flood::", Some(&disk), Some(peer), &["dev::flood::net_and_disk_one_cpu"]);
}

/// Without its device a `dev::` test fails, naming the device (it never skips).
#[test]
fn missing_device_fails_by_name() {
    let cfg = BootConfig::new(1, "run=tests test.filter=dev::blk::bad").with_timeout(TIMEOUT);
    let r = {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"))
    };
    let why = tail(&r);
    assert_eq!(r.exit_code(), Some(qemu::EXIT_FAILURE), "{why}");
    let msg = r
        .events
        .iter()
        .find_map(|e| match e {
            Event::Test { name, pass: false, msg, .. } if name == "dev::blk::bad_requests_refused" => {
                msg.clone()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no failure line\n{why}"));
    assert!(msg.contains("virtio-blk0"), "{msg}\n{why}");
}
