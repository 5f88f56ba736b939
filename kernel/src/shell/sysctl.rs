//! `sysctl`: the kernel's run-time tunables, in one registry that drivers add to
//! ([`register_sysctl`]). Formats in docs/PROTOCOL.md ("Shell"):
//!
//! ```text
//! sysctl                 every tunable, sorted by name: <name>=<value>
//! sysctl -d              every tunable: <name>=<value> <rw|ro> <description>
//! sysctl <name>          <name>=<value>
//! sysctl <name>=<value>  sets it, then: <name>=<new value> (was <old value>)
//! ```
//!
//! A name nobody registered, a value the tunable refuses, or a write to a read-only one is an
//! error that names the tunable (and the value). Values are single words; booleans read as
//! `on`/`off` and are set with `on|off|1|0|true|false`.
//!
//! Getters and setters run without the registry's lock held (they may take locks or sleep).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use super::{bail, ShellError};
use crate::intr::INTR;
use crate::locks::{Mutex, SYNC};

/// Reads a tunable's value (one word).
pub type SysctlGet = Box<dyn Fn() -> String + Send + Sync>;
/// Sets a tunable from a value as typed; `Err` says why the value is refused (the shell adds
/// the tunable's name and the value).
pub type SysctlSet = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Entry {
    name: &'static str,
    desc: &'static str,
    get: SysctlGet,
    set: Option<SysctlSet>,
}

static REGISTRY: Mutex<Vec<Arc<Entry>>> = Mutex::new_adaptive("shell.sysctl", Vec::new());
static BUILTINS: AtomicBool = AtomicBool::new(false);

/// Registers a tunable: `set` is `None` for a read-only one. A name must be non-empty, without
/// spaces or `=`, and not registered already; the error says which rule it broke.
pub fn register_sysctl(
    name: &'static str,
    desc: &'static str,
    get: SysctlGet,
    set: Option<SysctlSet>,
) -> Result<(), String> {
    with_registry(|reg| add(reg, Entry { name, desc, get, set }))
}

/// Removes a tunable (a driver going away, a test cleaning up); whether it was registered.
pub fn unregister_sysctl(name: &str) -> bool {
    with_registry(|reg| {
        let before = reg.len();
        reg.retain(|e| e.name != name);
        reg.len() != before
    })
}

/// Runs `f` on the registry, locked, with the built-in tunables in it.
fn with_registry<R>(f: impl FnOnce(&mut Vec<Arc<Entry>>) -> R) -> R {
    let mut reg = REGISTRY.lock();
    if !BUILTINS.swap(true, Ordering::Relaxed) {
        for (name, desc, get, set) in BUILTIN {
            let set: Option<SysctlSet> = set.map(|s| Box::new(s) as SysctlSet);
            if let Err(e) = add(&mut reg, Entry { name, desc, get: Box::new(get), set }) {
                panic!("{e}");
            }
        }
    }
    f(&mut reg)
}

fn add(reg: &mut Vec<Arc<Entry>>, e: Entry) -> Result<(), String> {
    if e.name.is_empty() || e.name.contains(|c: char| c.is_whitespace() || c == '=') {
        return Err(alloc::format!("sysctl name '{}' is empty or has a space or '='", e.name));
    }
    if reg.iter().any(|x| x.name == e.name) {
        return Err(alloc::format!("sysctl name '{}' is registered twice", e.name));
    }
    reg.push(Arc::new(e));
    Ok(())
}

fn find(name: &str) -> Result<Arc<Entry>, ShellError> {
    match with_registry(|reg| reg.iter().find(|e| e.name == name).cloned()) {
        Some(e) => Ok(e),
        None => bail!("sysctl: unknown name '{name}'"),
    }
}

/// The value of tunable `name`.
pub fn sysctl_get(name: &str) -> Result<String, ShellError> {
    Ok((find(name)?.get)())
}

/// Sets tunable `name` to `value`; returns its value before.
pub fn sysctl_set(name: &str, value: &str) -> Result<String, ShellError> {
    let e = find(name)?;
    let Some(set) = e.set.as_ref() else { bail!("sysctl: {name} is read-only") };
    if value.is_empty() {
        bail!("sysctl: {name}: empty value");
    }
    let old = (e.get)();
    match set(value) {
        Ok(()) => Ok(old),
        Err(why) => bail!("sysctl: {name}: bad value '{value}': {why}"),
    }
}

/// The `sysctl` command.
pub fn command(args: &[&str], out: &mut dyn Write) -> Result<(), ShellError> {
    match args {
        [] | ["-d"] => {
            let mut all: Vec<Arc<Entry>> = with_registry(|reg| reg.clone());
            all.sort_by(|a, b| a.name.cmp(b.name));
            for e in all {
                let v = (e.get)();
                if args.is_empty() {
                    writeln!(out, "{}={v}", e.name)?;
                } else {
                    let rw = if e.set.is_some() { "rw" } else { "ro" };
                    writeln!(out, "{}={v} {rw} {}", e.name, e.desc)?;
                }
            }
        }
        [one] => match one.split_once('=') {
            None => writeln!(out, "{one}={}", sysctl_get(one)?)?,
            Some((name, value)) => {
                let old = sysctl_set(name, value)?;
                writeln!(out, "{name}={} (was {old})", sysctl_get(name)?)?;
            }
        },
        [_, extra, ..] => bail!("sysctl: unexpected argument '{extra}' (one name or name=value)"),
    }
    Ok(())
}

fn on_off(b: bool) -> String {
    String::from(if b { "on" } else { "off" })
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        _ => Err(String::from("expected on or off")),
    }
}

fn parse_u64(v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|_| String::from("expected a non-negative integer"))
}

/// Milliseconds from a value, as nanoseconds.
fn parse_ms(v: &str) -> Result<u64, String> {
    parse_u64(v)?.checked_mul(1_000_000).ok_or_else(|| String::from("too large"))
}

fn storm() -> &'static intr::storm::StormParams {
    &intr::storm::PARAMS
}

/// A built-in tunable: name, description, getter, setter (`None`: read-only).
type Builtin = (&'static str, &'static str, fn() -> String, Option<fn(&str) -> Result<(), String>>);

const BUILTIN: &[Builtin] = &[
    (
        "intr.pool.size",
        "pooled ithreads: the target size (settable, 2 x NCPU ..= pool-model handlers; see \
         intr.pool.bounds) and the live size (threads that exist now; the pool starts them on \
         its first pool-model handler or resize)",
        || {
            // The size the pool works towards: the one asked for, clamped to the bounds; never
            // asked (0): the lower bound (the rule of `intr::pool::Pool::resize`).
            let (lo, hi) = INTR.pool.size_bounds();
            let target = match INTR.pool.target() {
                0 => lo,
                t => t.clamp(lo, hi),
            };
            alloc::format!("{target} (target; live {})", INTR.pool.stats().size)
        },
        Some(|v| {
            let n = usize::try_from(parse_u64(v)?).map_err(|_| String::from("too large"))?;
            let (lo, hi) = INTR.pool.size_bounds();
            if !(lo..=hi).contains(&n) {
                return Err(alloc::format!("out of range {lo}..={hi} (2 x NCPU ..= pool-model handlers)"));
            }
            INTR.pool.set_size(n);
            Ok(())
        }),
    ),
    (
        "intr.pool.bounds",
        "sizes intr.pool.size accepts now: <2 x NCPU>..=<max(that, pool-model handlers)>",
        || {
            let (lo, hi) = INTR.pool.size_bounds();
            alloc::format!("{lo}..={hi}")
        },
        None,
    ),
    ("intr.pool.idle", "pooled ithreads idle now", || INTR.pool.stats().idle.to_string(), None),
    (
        "intr.balance",
        "pool model: send idle ithreads to help a busy CPU (on|off)",
        || on_off(INTR.pool.balancing()),
        Some(|v| {
            INTR.pool.set_balancing(parse_bool(v)?);
            Ok(())
        }),
    ),
    (
        "intr.pinned.threads",
        "pinned model: interrupt threads per CPU that interrupts may borrow the CPU with \
         (settable, 1..=16): a blocked handler's thread is replaced by the next parked one; \
         raising the bound makes the missing threads, lowering it leaves them parked",
        || {
            let s = INTR.pinned.stats();
            alloc::format!("{} (bound per CPU; made {} on all CPUs)", s.limit, s.threads)
        },
        Some(|v| {
            let n = usize::try_from(parse_u64(v)?).map_err(|_| String::from("too large"))?;
            INTR.pinned.set_limit(n).map_err(|e| e.to_string())
        }),
    ),
    (
        "intr.thread_priority",
        "the priority of each source's handler thread, as chrt sets a Linux irq thread's: \
         <source>:<priority> for every source with one (dedicated, pool; '*' marks a priority \
         set here); set one with <source>:<0..127> or <source>:default",
        || {
            let mut out = String::new();
            for s in INTR.sources() {
                if let Some(p) = s.thread_priority() {
                    let set = if s.thread_priority_is_set() { "*" } else { "" };
                    let _ = write!(
                        out,
                        "{}{}:{}{}",
                        if out.is_empty() { "" } else { "," },
                        s.name(),
                        p.get(),
                        set
                    );
                }
            }
            if out.is_empty() {
                out.push('-');
            }
            out
        },
        Some(|v| {
            let (name, p) = v.rsplit_once(':').ok_or("expected <source>:<priority> or <source>:default")?;
            let src = INTR
                .sources()
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| alloc::format!("no interrupt source named '{name}'"))?;
            let pri = match p {
                "default" => None,
                p => Some(
                    u8::try_from(parse_u64(p)?)
                        .ok()
                        .and_then(sched::Priority::new)
                        .ok_or("a priority is 0..=127")?,
                ),
            };
            src.set_thread_priority(pri).map_err(|e| e.to_string())
        }),
    ),
    (
        "intr.model.default",
        "dispatch model of sources established without one (direct|dedicated|pool|pinned)",
        || String::from(INTR.default_model().name()),
        Some(|v| {
            let m = intr::Model::from_name(v).ok_or("expected direct, dedicated, pool or pinned")?;
            INTR.set_default_model(m);
            Ok(())
        }),
    ),
    (
        "intr.storm.window_ms",
        "storm rule: window length, ms (1..=1000)",
        || (storm().window_ns() / 1_000_000).to_string(),
        Some(|v| Ok(storm().set_window_ns(parse_ms(v)?)?)),
    ),
    (
        "intr.storm.hot_windows",
        "storm rule: consecutive hot windows that make a storm (1..=1000)",
        || storm().hot_windows().to_string(),
        Some(|v| {
            let n = u32::try_from(parse_u64(v)?).map_err(|_| String::from("too large"))?;
            Ok(storm().set_hot_windows(n)?)
        }),
    ),
    (
        "intr.storm.min_arrivals",
        "storm rule: arrivals per window below which a source is never hot",
        || storm().min_arrivals().to_string(),
        Some(|v| Ok(storm().set_min_arrivals(parse_u64(v)?)?)),
    ),
    (
        "intr.storm.busy_percent",
        "storm rule: share of one CPU a source's filter and handler must spend on arrivals \
         that found no work in a window for it to be hot, % (1..=1000)",
        || storm().busy_percent().to_string(),
        Some(|v| Ok(storm().set_busy_percent(parse_u64(v)?)?)),
    ),
    (
        "intr.storm.idle_percent",
        "storm rule: % of a window's arrivals that found no work (nobody claimed them, or the \
         filter or handler said so) for it to be hot (1..=100)",
        || storm().idle_percent().to_string(),
        Some(|v| Ok(storm().set_idle_percent(parse_u64(v)?)?)),
    ),
    (
        "intr.storm.quiet_ms",
        "storm rule: time a re-enabled source must stay out of storm for the storm to be over, \
         ms (1..=60000)",
        || (storm().quiet_ns() / 1_000_000).to_string(),
        Some(|v| Ok(storm().set_quiet_ns(parse_ms(v)?)?)),
    ),
    (
        "intr.storm.backoff_min_ms",
        "storm rule: first re-enable delay, ms (1..=backoff_max_ms)",
        || (storm().backoff_min_ns() / 1_000_000).to_string(),
        Some(|v| Ok(storm().set_backoff_min_ns(parse_ms(v)?)?)),
    ),
    (
        "intr.storm.backoff_max_ms",
        "storm rule: longest re-enable delay, ms (backoff_min_ms..=60000)",
        || (storm().backoff_max_ns() / 1_000_000).to_string(),
        Some(|v| Ok(storm().set_backoff_max_ns(parse_ms(v)?)?)),
    ),
    (
        "kern.lockstat",
        "per-lock-class statistics (on|off; off by default: the lock fast paths are taken)",
        || on_off(SYNC.witness.stats_on()),
        Some(|v| {
            SYNC.witness.set_stats(parse_bool(v)?);
            Ok(())
        }),
    ),
    (
        "kern.lockcheck",
        "lock-order and IPL checker (on|off; on needs kern.lockstat on: held locks must be recorded)",
        || on_off(SYNC.witness.checking()),
        Some(|v| {
            let on = parse_bool(v)?;
            if on && !SYNC.witness.active() {
                return Err(String::from("turn kern.lockstat on first (locks held now were not recorded)"));
            }
            SYNC.witness.set_checking(on);
            Ok(())
        }),
    ),
];
