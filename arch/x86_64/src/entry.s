# ithreads x86_64 entry code (AT&T syntax). Everything that must be assembly lives here:
#   1. the PVH ELF note and 32-bit entry (QEMU -kernel), paging, long mode;
#   2. the application-processor trampoline (real mode -> long mode), copied to 0x8000;
#   3. trap_common: the shared tail of the 256 generated interrupt stubs;
#   4. context switch and the first frame of a new thread;
#   5. the pinned interrupt-thread switch (`intr_pin_call`): the short path that lends the CPU
#      to a per-CPU interrupt thread without the scheduler.
#
# Protocol common to 4 and 5: called from Rust in ring 0, interrupts disabled — section 4 with
# the System V ABI, section 5 through an `asm!` call with its own register convention (see
# there) — GS base = this CPU's `PerCpu` (%gs:16 is `curthread`, %gs:24 the IPL and %gs:28 the
# spin-mutex count, %gs:40 the pinned context (non-zero exactly while a pinned call is
# active), %gs:72 the interrupt depth; cpu.rs). A switched-out thread's context is its stack pointer; its stack holds, from that
# pointer up, r15, r14, r13, r12, rbx, rbp and a return address (the "switch frame"):
# `context_switch` pops it and returns 0 in %eax (which only section 5's frame looks at: 0 is
# "blocked"). Section 5 saves the interrupted thread in that frame's format (writing only the
# slots its caller needs), so a blocking interrupt thread can hand the CPU back with an
# ordinary `context_switch`. The IPL is only tested here, never written: the interrupt thread
# runs at the level it was dispatched at, IPL_VM (crates/intr/src/pinned.rs), and may block
# at it; nor is the interrupt depth touched (the `busy` word, which holds the borrowing
# thread, tells its context from interrupt context).

# ---------------------------------------------------------------------------------------
# 1. PVH boot. QEMU reads XEN_ELFNOTE_PHYS32_ENTRY (type 18) and enters pvh_start32 in
#    32-bit protected mode, paging off, %ebx = physical address of struct hvm_start_info.

.section .note.Xen, "a", @note
.p2align 2
    .long 4                     # name size ("Xen\0")
    .long 8                     # descriptor size
    .long 18                    # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .p2align 2
    .quad pvh_start32

.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi                     # keep start_info
    # Zero .bss (page tables and the boot stack live there).
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $boot_stack_top, %esp

    # PML4[0] -> PDPT; PDPT[0..4] -> four page directories; 2048 x 2 MiB pages identity-map
    # the low 4 GiB, with 3..4 GiB (LAPIC, IOAPIC, PCI BARs) uncached.
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                     # present, writable, 2 MiB page
    cmpl $1536, %ecx
    jb 3f
    orl $0x18, %eax                     # PWT | PCD above 3 GiB
3:  movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                     # PAE
    movl %eax, %cr4
    movl $0xC0000080, %ecx              # EFER
    rdmsr
    orl $0x900, %eax                    # LME | NXE
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax               # PG | WP | PE
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

.code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl %esi, %edi                     # start_info (zero-extended)
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    call arch_boot_bsp
4:  hlt
    jmp 4b

.section .rodata.boot, "a"
.p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            # 0x08: 64-bit code
    .quad 0x00CF92000000FFFF            # 0x10: data
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

.section .bss.boot, "aw", @nobits
.p2align 12
.global boot_pml4
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4
.p2align 4
boot_stack: .skip 65536
.global boot_stack_top
boot_stack_top:

# ---------------------------------------------------------------------------------------
# 2. AP trampoline. Copied to AP_TRAMPOLINE (0x8000) and started by INIT-SIPI-SIPI with
#    vector 0x08. Position-dependent: every address is (label - ap_tramp_start + 0x8000).
#    The BSP fills the data slots (cr3, stack, entry, argument) before each start.

.section .rodata.ap_tramp, "a"
.code16
.global ap_tramp_start
.global ap_tramp_end
.global ap_tramp_cr3
.global ap_tramp_stack
.global ap_tramp_entry
.global ap_tramp_arg
.set TR, 0x8000
ap_tramp_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (ap_gdt_ptr - ap_tramp_start + TR)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(ap_tramp32 - ap_tramp_start + TR)
.code32
ap_tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (ap_tramp_cr3 - ap_tramp_start + TR), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmp $0x18, $(ap_tramp64 - ap_tramp_start + TR)
.code64
ap_tramp64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (ap_tramp_stack - ap_tramp_start + TR), %rsp
    movq (ap_tramp_arg - ap_tramp_start + TR), %rdi
    movq (ap_tramp_entry - ap_tramp_start + TR), %rax
    xorl %ebp, %ebp
    jmp *%rax
.p2align 3
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF            # 0x08: 32-bit code
    .quad 0x00CF92000000FFFF            # 0x10: data
    .quad 0x00AF9A000000FFFF            # 0x18: 64-bit code
ap_gdt_end:
ap_gdt_ptr:
    .word ap_gdt_end - ap_gdt - 1
    .long ap_gdt - ap_tramp_start + TR
.p2align 3
ap_tramp_cr3:   .quad 0
ap_tramp_stack: .quad 0
ap_tramp_entry: .quad 0
ap_tramp_arg:   .quad 0
ap_tramp_end:

# ---------------------------------------------------------------------------------------
# 3. Interrupt entry. Each generated stub pushed (error code or 0) and the vector; here we
#    save the general registers so the stack holds a `TrapFrame` (see trap.rs), call
#    `trap_dispatch(&mut TrapFrame)` and return. Interrupt gates keep IF clear throughout.
#    The frame is 22 quadwords and the CPU 16-byte-aligns RSP before pushing its part, so
#    the call below is made with an aligned stack. The kernel runs in ring 0 only and keeps
#    one GS base per CPU, so there is no swapgs.

.section .text.trap, "ax"
.global trap_common
trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    call trap_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp                      # vector, error code
    iretq

# ---------------------------------------------------------------------------------------
# 4. Context switch: context_switch(from: *mut usize, to: *const usize).
#    Saves the callee-saved registers on the current stack, stores RSP in *from, loads RSP
#    from *to and pops the same registers. A new thread's stack is prepared by
#    `new_context` so that the pops load its entry and argument and `ret` lands in
#    thread_trampoline.

.section .text, "ax"
.global context_switch
context_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq (%rsi), %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    xorl %eax, %eax                     # PinOutcome::Blocked for a pinned call's frame
    ret

.global thread_trampoline
thread_trampoline:
    movq %r12, %rdi                     # argument
    xorl %ebp, %ebp                     # end of the frame-pointer chain
    call *%r13                          # entry (never returns)
    ud2

# ---------------------------------------------------------------------------------------
# 5. Pinned interrupt-thread switch (protocol: crates/sched/src/pinned.rs; NetBSD's fast
#    softint switch, illumos' intr_thread):
#
#    intr_pin_call(a0, a1, call) -> PinOutcome   %rdi, %rsi: body's arguments, in place;
#                                                 %rdx: the thread's `machine::PinCall`
#    intr_pin_call_leveled(a0, a1, call)          the same after the caller's level test
#                                                 (`PinSwitch::pin_call_leveled`)
#    intr_pin_end()                               the body's end (`PinSwitch::pin_end`)
#    intr_pin_end_borrowing                       the same after the body's own test
#                                                 (`PinSwitch::pin_end_borrowing`; jumped to)
#    intr_pin_end_borrowing_more                  the same, answering 4 (ReturnedMore:
#                                                 `PinSwitch::pin_end_borrowing_more`)
#
#    `PinCall` (repr C): 0 state (even parked, odd a call under way; counted up by one at
#    each change, so it also counts the calls: `PinCall::calls`), 8 thread, 16 stack
#    top, 24 body, 32 level. Per CPU: %gs:16 curthread, %gs:24 the IPL (32 bits) and %gs:28
#    the spin-mutex count (counted down from 0; cpu.rs), %gs:40 the pinned context
#    (`PerCpu::pin_ctx`: the innermost active pinned call's frame, 0 when none is active —
#    the running thread borrows the CPU exactly when it is not 0), %gs:72 the interrupt
#    depth (`Machine::intr_depth`). Caller:
#    `PinSwitch::pin_call` and `pin_call_leveled` only, through an `asm!` call that declares everything but %rbx,
#    %rbp and %rsp clobbered — the C ABI's caller-saved registers and r12..r15 too;
#    interrupts disabled, on the running thread's stack.
#      - the 64-bit word at %gs:24 not the call's level: the IPL (its low half) is another
#        level, or spin mutexes are held (its high half, the count): return 3 (Level),
#        nothing done. (`intr_pin_call_leveled` starts after this test: its caller made it,
#        interrupts disabled since.)
#      - state odd (the thread borrows a CPU or is blocked): return 2 (Busy), nothing
#        done. Both leave %rdi and %rsi as they came.
#      - else build a switch frame of section 4 on the running stack —
#        rbp and rbx in their slots, the running thread in r12's, the previous pinned context
#        in r13's, the interrupt depth in r14's, the call in r15's — so borrows nest: the
#        running thread may itself be a borrowing interrupt thread. Its address becomes
#        %gs:40 (so it is not 0 while the call is active); the depth 0 (the borrower runs in
#        thread context: the exit of an interrupt nested in it is its preemption point);
#        curthread becomes the thread and the call's state odd; %rsp its stack top (nothing on it); interrupts are
#        enabled and body(a0, a1) runs.
#      - body ends (the fast path): with interrupts disabled it calls `intr_pin_end`
#        (`Scheduler::pin_end`), which tests in the same interrupt-disabled sequence that
#        the running thread is still the borrower (%gs:40 not 0: a thread that stopped
#        borrowing — it blocked or was preempted — runs again only once every pinned call on
#        its CPU has ended, and an ordinary thread never runs while one is active). If so it
#        leaves the body's stack as it is (the next call starts at the top again), takes the
#        frame at %gs:40 — the innermost call's, the running thread's own — parks the call's
#        state (the frame's r15 slot), pops the depth, the pinned context (0 again unless
#        an outer call is active) and curthread back from the frame (then rbx and rbp), and returns
#        from `intr_pin_call` with 1
#        (Returned). If not (the thread blocked or was preempted
#        during the call: its frame is gone, resumed by the thread underneath), it returns to
#        the body with only %rax and the flags changed, and the body finishes as an ordinary
#        thread and parks. A body may make that test itself, in Rust, with interrupts
#        disabled and kept so (the framework's ithread body does: the same answer also
#        decides its handler accounting), and then jump to `intr_pin_end_borrowing`, the
#        return without the test, or to `intr_pin_end_borrowing_more`, the same return
#        answering 4 (ReturnedMore: the body queued work, so its caller drains; a caller
#        then need not test its queue after every Returned).
#      - body returns instead (bodies that end with `Scheduler::pin_return`, or none):
#        interrupts off, the same borrower test, then the same return as `intr_pin_end`'s;
#        if the thread no longer borrows the CPU, `intr_pin_bad_return` panics naming it
#        rather than jump through a frame that is gone.
#      - body blocks: the scheduler finds the CPU borrowed (the call's state stays odd), makes
#        the thread an ordinary thread, puts the depth and the pinned context back from the
#        frame (`PinSwitch::pin_switch_under`) and
#        `context_switch`es to the frame
#        (the context %gs:40 held): it pops (r12..r15 get the frame's words, which the caller
#        treats as clobbered) and `ret` returns from this call with %eax = 0 (Blocked),
#        interrupts disabled. body's stack is the thread's own from then on; it must never
#        return into this frame (the thread parks its state when it is done).
#    Stack alignment: entered with %rsp = 8 mod 16; body is entered with %rsp = stack_top - 8,
#    as the ABI wants.

.global intr_pin_call
intr_pin_call:
    movq 32(%rdx), %rax
    cmpq %rax, %gs:24                   # at the call's level, no spin mutex held?
    jne 8f
.global intr_pin_call_leveled
intr_pin_call_leveled:                  # the caller made the level test
    testq $1, (%rdx)                    # parked (state even)?
    jne 9f
    pushq %rbp
    pushq %rbx
    pushq %gs:16                        # r12's slot: the running thread
    pushq %gs:40                        # r13's slot: the previous pinned context
    pushq %gs:72                        # r14's slot: the interrupt depth
    pushq %rdx                          # r15's slot: the call
    movq %rsp, %gs:40                   # the pinned thread's context
    movq $0, %gs:72                     # the borrower runs at interrupt depth 0
    movq 8(%rdx), %rax
    movq %rax, %gs:16                   # curthread = the interrupt thread
    incq (%rdx)                         # state odd: a call under way (and one more counted)
    movq 16(%rdx), %rsp                 # its stack
    sti
    call *24(%rdx)                      # body(a0, a1)
    cli                                 # a body that returned instead of ending through
    cmpq $0, %gs:40                     # intr_pin_end: the same check, but a panic if the
    jne .Lpin_end_return                # thread no longer borrows the CPU
    movq %gs:16, %rdi                   # a body returned after its thread stopped borrowing
    call intr_pin_bad_return            # (blocked or preempted): the frame is gone; panics
8:  movl $3, %eax                       # PinOutcome::Level
    ret
9:  movl $2, %eax                       # PinOutcome::Busy
    ret

.global intr_pin_end
intr_pin_end:
    cmpq $0, %gs:40                     # does the running thread still borrow the CPU?
    je 1f
.Lpin_end_return:
.global intr_pin_end_borrowing
intr_pin_end_borrowing:                 # the body tested the borrower itself, interrupts off
    movl $1, %eax                       # PinOutcome::Returned
.Lpin_end_answer:                       # %eax: the answer
    movq %gs:40, %rsp                   # back on the pinned stack: the body's is abandoned
    popq %rcx                           # r15's slot: the call
    incq (%rcx)                         # state even: parked
    popq %gs:72                         # r14's slot: the interrupt depth
    popq %gs:40                         # r13's slot: the previous pinned context
    popq %gs:16                         # r12's slot: curthread = the pinned thread
    popq %rbx
    popq %rbp
    ret                                 # from intr_pin_call
1:  ret                                 # not the borrower: back to the body

.global intr_pin_end_borrowing_more
intr_pin_end_borrowing_more:            # the same, answering PinOutcome::ReturnedMore (the
    movl $4, %eax                       # body queued work: the dispatcher drains)
    jmp .Lpin_end_answer
