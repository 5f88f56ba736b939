//! Command-line parsing: every option, and the errors that name the culprit.

use alloc::string::ToString;
use ktest::{kassert, kassert_eq, ktest, TestResult};

use crate::cmdline::{parse, HarnessCheck, Options, RunMode};

fn defaults_and_every_option() -> TestResult {
    kassert_eq!(parse("").map_err(|e| e.option), Ok(Options::default()));
    let o = parse("run=tests test.filter=sched:: hz=250 scenario.ms=500 test.harness=hang")
        .map_err(|e| e.option)?;
    kassert_eq!(o.run, RunMode::Tests);
    kassert_eq!(o.test_filter, "sched::".to_string());
    kassert_eq!(o.hz, 250);
    kassert_eq!(o.scenario_ms, 500);
    kassert_eq!(o.harness, Some(HarnessCheck::Hang));
    Ok(())
}
ktest!(T_DEFAULTS, "cmdline::parse::every_option", defaults_and_every_option);

fn errors_name_the_option() -> TestResult {
    let e = parse("run=tests bogus.option=1").err().ok_or("bogus option accepted")?;
    kassert_eq!(e.option, "bogus.option".to_string());
    let e = parse("hz=5").err().ok_or("hz=5 accepted")?;
    kassert_eq!(e.option, "hz".to_string());
    let e = parse("hz=abc").err().ok_or("hz=abc accepted")?;
    kassert_eq!(e.option, "hz".to_string());
    let e = parse("run=nothing").err().ok_or("run=nothing accepted")?;
    kassert_eq!(e.option, "run".to_string());
    let e = parse("novalue").err().ok_or("word without = accepted")?;
    kassert_eq!(e.option, "novalue".to_string());
    kassert!(e.msg.contains("key=value"));
    Ok(())
}
ktest!(T_ERRORS, "cmdline::parse::errors_name_the_option", errors_name_the_option);
