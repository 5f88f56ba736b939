//! Generates the 256 interrupt entry stubs (one per IDT vector) and their address table.
//! Writing them out here keeps the assembly free of assembler-specific macro tricks.

use std::fmt::Write;

fn main() {
    // Vectors whose exception pushes an error code; the others get a dummy 0 so that every
    // stub hands `trap_common` the same frame layout.
    let has_error = |v: u32| matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30);
    let mut s = String::new();
    s.push_str(".section .text.trap, \"ax\"\n");
    for v in 0..256u32 {
        writeln!(s, ".p2align 4\ntrap_stub_{v}:").unwrap();
        if !has_error(v) {
            s.push_str("    pushq $0\n");
        }
        writeln!(s, "    pushq ${v}\n    jmp trap_common").unwrap();
    }
    s.push_str(".section .rodata.trap, \"a\"\n.p2align 3\n.global trap_stub_table\ntrap_stub_table:\n");
    for v in 0..256u32 {
        writeln!(s, "    .quad trap_stub_{v}").unwrap();
    }
    let out = std::env::var("OUT_DIR").unwrap();
    std::fs::write(format!("{out}/trap_stubs.s"), s).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
