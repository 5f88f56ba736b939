//! Hostile traffic injected into the running main job's NIC (issue 11): the real kernel under
//! `run=scenario`, the host's real stream peer (`ithreads::traffic::NetPeer`) and the main
//! job's own feeder, results, verdict and summary (`ithreads::workload`). A wrapper around the
//! peer sends the run's 8000 frames and then the junk, before the end marker, so the guest
//! counts it in the run. The serial paste and the disk are left out to keep each boot short.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use ithreads::harness;
use ithreads::qemu::{self, BootConfig};
use ithreads::traffic::{self, NetPeer};
use ithreads::workload::{self, Counters, EchoStats, HostCounters, JobResults, Plan, TrafficSource};

/// One QEMU at a time (the guest's timing matters, and the host has few cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a test does to the traffic: `send` gets the peer and the run's sequence numbers and
/// sends what it likes (normally the run, then junk).
type Script = Box<dyn Fn(&NetPeer, Range<u64>, bool, u32) -> io::Result<()> + Send + Sync>;

struct Injecting {
    peer: NetPeer,
    script: Script,
}

impl TrafficSource for Injecting {
    fn send(&self, seqs: Range<u64>, echo: bool, rate: u32) -> io::Result<()> {
        (self.script)(&self.peer, seqs, echo, rate)
    }
    fn send_end(&self, total: u64) -> io::Result<()> {
        self.peer.send_end(total)
    }
    fn echoes(&self) -> EchoStats {
        self.peer.echoes()
    }
    fn sent_in_run(&self) -> Option<u64> {
        Some(self.peer.sent_in_run())
    }
}

struct Outcome {
    counters: Counters,
    host: workload::HostTraffic,
    problems: Vec<String>,
    summary: String,
}

/// Boots the main job on 2 CPUs with the NIC driven by `script`; returns the guest's
/// workload counters, the verdict's problems and the summary the tool prints.
fn main_job(script: Script) -> Outcome {
    let peer = NetPeer::new().expect("NIC peer");
    let extra = peer.qemu_args();
    let net: Arc<dyn TrafficSource> = Arc::new(Injecting { peer, script });
    let plan = Plan { serial_lines: 0 };
    let counters = Arc::new(HostCounters::default());
    let mut cfg = BootConfig::new(2, "run=scenario workload.serial=off scenario.ms=60000")
        .with_timeout(Duration::from_secs(180));
    cfg.extra_args = extra;
    cfg.input = workload::feeder(plan, Some(Arc::clone(&net)), Arc::clone(&counters));
    let report = {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        qemu::boot(&cfg).unwrap_or_else(|e| panic!("could not boot: {e}"))
    };
    let results = JobResults::from_events(&report.events);
    let host = counters.snapshot(&plan, Some(&*net));
    let problems = workload::problems(&results, &host);
    let summary = workload::summary(&results, &host);
    let why = format!("{summary}\n{}", harness::report_tail(&report, harness::TAIL_LINES));
    let counters = results.workload.unwrap_or_else(|| panic!("no workload result\n{why}"));
    assert!(counters.parts.net, "no NIC counters\n{why}");
    Outcome { counters, problems, summary: why, host }
}

/// The run's frames, as the host tool sends them.
fn the_run(p: &NetPeer, seqs: Range<u64>, echo: bool, rate: u32) -> io::Result<()> {
    p.send(seqs, echo, rate)
}

fn has(problems: &[String], needle: &str) -> bool {
    problems.iter().any(|p| p.contains(needle))
}

/// The last 100 frames are never sent, and frames 0..99 are replayed 3 times: 300
/// duplicates. They used to read `sent 8000, received 8200, ..., lost 0` — the duplicates hid
/// the loss. Now: 100 lost, 300 duplicates, received > sent flagged.
#[test]
fn replayed_frames_are_duplicates_and_cannot_hide_losses() {
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        p.send(seqs.start..seqs.end - 100, echo, rate)?;
        for _ in 0..3 {
            for seq in seqs.start..seqs.start + 100 {
                p.send_raw(&traffic::build_frame(seq, 0))?;
            }
        }
        Ok(())
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((o.host.frames_sent, o.host.still_sending), (8000, false), "{s}");
    assert_eq!(c.net_rx, 8200, "{s}");
    assert_eq!(c.net_unique, Some(7900), "{s}");
    assert_eq!(c.net_dup, 300, "{s}");
    assert_eq!((c.net_range, c.net_bad, c.net_foreign), (0, 0, 0), "{s}");
    assert_eq!(c.net_lost, 100, "{s}");
    assert_eq!(c.verified, Some(false), "{s}");
    assert!(s.contains("frames:  sent 8000, received 8200, verified 7900, lost 100; duplicates 300,"), "{s}");
    assert!(has(&o.problems, "100 frames lost (sent 8000, verified 7900)"), "{:?}\n{s}", o.problems);
    assert!(has(&o.problems, "received 8200 frames, more than the 8000 sent: 300 duplicates"), "{s}");
    assert!(s.contains("verdict: FAILED"), "{s}");
}

/// A verified frame with sequence number 2^64 − 1 (and one just past the run) is out of
/// range; nothing wraps (it used to print `lost 18446744073709551615`).
#[test]
fn forged_huge_sequence_number_is_out_of_range_and_does_not_wrap() {
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        the_run(p, seqs.clone(), echo, rate)?;
        p.send_raw(&traffic::build_frame(u64::MAX, 0))?;
        p.send_raw(&traffic::build_frame(seqs.end, 0))
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((o.host.frames_sent, o.host.still_sending), (8000, false), "{s}");
    assert_eq!((c.net_rx, c.net_unique, c.net_range, c.net_lost), (8002, Some(8000), 2, 0), "{s}");
    assert!(!s.contains("18446744073709551615"), "a count wrapped:\n{s}");
    assert!(s.contains("verified 8000, lost 0; duplicates 0, out of range 2,"), "{s}");
    assert!(has(&o.problems, "2 frames outside the run's sequence numbers"), "{s}");
    assert!(has(&o.problems, "received 8002 frames, more than the 8000 sent: 2 out of range"), "{s}");
    assert!(!has(&o.problems, "lost"), "{:?}", o.problems);
}

/// 50 frames that carry our header but fail verification: counted as bad, and `verified`
/// stays 8000 (it used to say `verified 7950`).
#[test]
fn bad_frames_with_our_header_do_not_reduce_verified() {
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        the_run(p, seqs.clone(), echo, rate)?;
        for seq in seqs.start..seqs.start + 50 {
            let mut f = traffic::build_frame(seq, 0);
            let last = f.len() - 1;
            f[last] ^= 0x5a; // a payload byte
            p.send_raw(&f)?;
        }
        Ok(())
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((o.host.frames_sent, o.host.still_sending), (8000, false), "{s}");
    assert_eq!(
        (c.net_rx, c.net_unique, c.net_bad, c.net_dup, c.net_lost),
        (8050, Some(8000), 50, 0, 0),
        "{s}"
    );
    assert!(s.contains("verified 8000, lost 0; duplicates 0, out of range 0, bad 50,"), "{s}");
    assert!(has(&o.problems, "50 frames failed verification"), "{s}");
    assert!(s.contains("verdict: FAILED"), "{s}");
}

/// Frames that are not ours (another EtherType, another destination) are counted as foreign
/// and reported; they are not the guest's to judge, so the verdict stays ok.
#[test]
fn foreign_frames_are_counted_and_reported() {
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        the_run(p, seqs, echo, rate)?;
        for i in 0..20u8 {
            let mut f = traffic::build_frame(u64::from(i), 0);
            if i % 2 == 0 {
                f[12..14].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
            } else {
                f[0..6].copy_from_slice(&[0xff; 6]); // broadcast
            }
            p.send_raw(&f)?;
        }
        Ok(())
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((o.host.frames_sent, o.host.still_sending), (8000, false), "{s}");
    assert_eq!((c.net_rx, c.net_unique, c.net_foreign, c.net_lost), (8000, Some(8000), 20, 0), "{s}");
    assert!(s.contains("bad 0, foreign 20"), "{s}");
    assert!(o.problems.is_empty(), "{:?}\n{s}", o.problems);
    assert!(s.contains("verdict: ok"), "{s}");
}

/// An empty frame: with QEMU's UDP socket netdev one empty datagram ended QEMU's reading for
/// good, and a 0-byte packet stalls QEMU 7.2's virtio-net whatever the backend. The peer
/// refuses to send one, naming why, and the run goes on intact.
#[test]
fn zero_length_frame_is_refused_and_the_run_goes_on() {
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        let e = p.send_raw(&[]).expect_err("an empty frame was sent");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("empty frame is refused"), "{e}");
        the_run(p, seqs, echo, rate)
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((o.host.frames_sent, o.host.still_sending), (8000, false), "{s}");
    assert_eq!(
        (c.net_rx, c.net_unique, c.net_lost, c.net_bad, c.net_foreign),
        (8000, Some(8000), 0, 0, 0),
        "{s}"
    );
    assert!(o.problems.is_empty(), "{:?}\n{s}", o.problems);
}

/// The empty frame sent anyway (`send_unchecked`): the guest's NIC never gets another frame.
/// The run does not wait out its 60 s with a bare "8000 frames lost": the guest gives the NIC
/// up after 15 s without a frame, and the verdict names the stall and the missing end marker.
#[test]
fn a_dead_nic_is_reported_as_a_receive_stall() {
    let t = std::time::Instant::now();
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        p.send_unchecked(&[])?;
        the_run(p, seqs, echo, rate)
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((c.net_unique, c.net_lost, c.net_end), (Some(0), 8000, Some(false)), "{s}");
    assert!(c.net_stall_ms >= 15_000, "{s}");
    assert!(has(&o.problems, "8000 frames lost (sent "), "{s}");
    // Whether the host's writes blocked once QEMU stopped reading depends on the socket
    // buffers (8000 frames may all fit); if they did, the verdict says so.
    assert_eq!(
        o.host.still_sending,
        has(&o.problems, "the host was still sending when the guest ended"),
        "{s}"
    );
    assert!(o.host.still_sending || o.host.frames_sent == 8000, "{s}");
    assert!(
        has(&o.problems, "NIC receive stalled: no frame for")
            && has(
                &o.problems,
                "after 0 frames, while the host was still sending; the end marker never came"
            ),
        "{:?}\n{s}",
        o.problems
    );
    assert!(t.elapsed() < Duration::from_secs(55), "waited for the scenario's limit: {:?}", t.elapsed());
}

/// The host pauses 6 s halfway: the guest reports the stall (how long, after how many
/// frames) and the summary says so; no frame is lost, so the verdict stays ok.
#[test]
fn receive_stall_is_reported() {
    let o = main_job(Box::new(|p, seqs, echo, rate| {
        let mid = seqs.start + 4000;
        p.send(seqs.start..mid, echo, rate)?;
        // Long enough that the frames still buffered on the way (a busy guest lags behind the
        // host) cannot fill the gap.
        std::thread::sleep(Duration::from_secs(6));
        // The rest unpaced through `send_raw` (`send` would start a new run: its end marker
        // would name `mid`).
        let flags = if echo { traffic::FLAG_ECHO } else { 0 };
        (mid..seqs.end).try_for_each(|seq| p.send_raw(&traffic::build_frame(seq, flags)))
    }));
    let (c, s) = (&o.counters, &o.summary);
    assert_eq!((o.host.frames_sent, o.host.still_sending), (8000, false), "{s}");
    assert!(c.net_stall_ms >= workload::NET_STALL_MS, "{s}");
    assert!((3900..=4000).contains(&c.net_stall_at), "{s}");
    assert!(s.contains("NIC receive stalled: no frame for"), "{s}");
    assert!(o.problems.is_empty(), "{:?}\n{s}", o.problems);
}
