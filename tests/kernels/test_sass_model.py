"""The SASS timing model's parsing (benchmarks.sass_model) on a canned listing: loops and
their trip counts, dynamic counts, matrix-instruction FLOPs, global bytes."""

from benchmarks.sass_model import (
    DEVICES,
    access_bytes,
    dynamic_counts,
    find_loops,
    launch_times,
    mma_flops,
    model_time,
    parse_sass,
)

# two nested loops as Triton compiles them: an outer loop of 0x50 = 80 steps of 1 whose
# back edge is unconditional and whose exit is a predicated CALL to the EXIT, and an inner
# one of 0x40 / 0x10 = 4 steps (64-bit counter, .EX compare)
CANNED = """
        Function : _canned_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   MOV R4, RZ ;
        /*0020*/                   LDG.E.128 R8, [R2.64] ;
        /*0030*/                   IADD3 R26, RZ, RZ, RZ ;
        /*0040*/                   FFMA R5, R6, R7, R5 ;
        /*0050*/                   HMMA.16816.F32.BF16 R12, R16, R20, R12 ;
        /*0060*/                   MUFU.EX2 R6, R6 ;
        /*0070*/                   IADD3 R26, P5, R26, 0x10, RZ ;
        /*0080*/                   ISETP.GE.U32.AND P4, PT, R26, 0x40, PT ;
        /*0090*/                   ISETP.GE.U32.AND.EX P4, PT, R27, RZ, PT, P4 ;
        /*00a0*/              @!P4 BRA 0x40 ;
        /*00b0*/                   STG.E.64 [R2.64], R12 ;
        /*00c0*/                   IADD3 R4, P1, R4, 0x1, RZ ;
        /*00d0*/                   ISETP.NE.U32.AND P1, PT, R4, 0x50, PT ;
        /*00e0*/              @!P1 CALL.REL.NOINC 0x100 ;
        /*00f0*/                   BRA 0x20 ;
        /*0100*/                   EXIT ;
        /*0110*/                   BRA 0x110;
"""


def test_parse_and_loops():
    instrs = parse_sass(CANNED)
    assert len(instrs) == 18
    assert instrs[10].pred == "!P4" and instrs[10].target == 0x40
    loops = find_loops(instrs)
    assert [(lp.trips, lp.resolved, lp.bound, lp.step) for lp in loops] == [
        (4, True, 0x40, 0x10),
        (80, True, 0x50, 1),
    ]


def test_dynamic_counts():
    c = dynamic_counts(parse_sass(CANNED))
    # inner body (0x40..0xa0, 7 instructions) runs 4 x 80 times; the rest of the outer
    # body (0x20, 0x30, 0xb0..0xf0: 7) 80 times; 0x00, 0x10 and EXIT once; the trailing
    # self-branch never
    assert c.instr == 7 * 320 + 7 * 80 + 3
    assert (c.ffma, c.mma, c.mufu) == (320, 320, 320)
    assert c.mma_flops == 320 * 2 * 16 * 8 * 16 and c.mma_kind == "bf16"
    assert c.ld_bytes == 80 * 32 * 16 and c.st_bytes == 80 * 32 * 8
    assert c.unresolved == 0


def test_unresolved_runtime_bound_counts_once():
    text = CANNED.replace("R26, 0x40, PT", "R26, c[0x0][0x178], PT")
    c = dynamic_counts(parse_sass(text))
    assert c.unresolved == 1 and c.ffma == 80


def test_opcode_helpers_and_floors():
    assert access_bytes("LDG.E.128") == 16 and access_bytes("LDG.E") == 4
    assert access_bytes("LDG.E.U16") == 2 and access_bytes("STG.E.64") == 8
    assert mma_flops("HMMA.1688.F32.TF32") == 2 * 16 * 8 * 8
    assert mma_flops("HGMMA.64x32x8.F32.TF32") == 2 * 64 * 32 * 8 // 4
    c = dynamic_counts(parse_sass(CANNED))
    times = launch_times(c, programs=1000, warps=4, dev=DEVICES["H100"])
    assert set(times) == {"issue", "mma", "fma", "mufu", "bytes"}
    t, bound = model_time(times)
    assert t > times[bound] and bound == max(times, key=times.get)


# the same two loops as sm_90 / sm_120 compile them: uniform counters (UR) and uniform
# predicates (UP) tested by the back edge as an operand (`BRA.U !UP0, target`); the inner
# counter is 64-bit (UIADD3.64 / UISETP.U64), the outer back edge branches while not equal;
# with the scheduling annotations (&req, &wr, ?WAIT) cuobjdump prints for sm_120
UNIFORM = """
        Function : _uniform_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   UMOV UR4, URZ ;
        /*0020*/                   LDG.E.128 R8, desc[UR10][R2.64]    &rd=0x0 &wr=0x2 ?trans1 ;
        /*0030*/                   UMOV.64 UR8, URZ ;
        /*0040*/                   FFMA R5, R6, R7, R5 ;
        /*0050*/                   UIADD3.64 UR8, UPT, UPT, UR8, 0x10, URZ    &req={1} ?trans1 ;
        /*0060*/                   UISETP.GE.U64.AND UP0, UPT, UR8, 0x40, UPT     ?WAIT3_END_GROUP ;
        /*0070*/                   HMMA.16816.F32.BF16 R12, R16, R20, R12 ;
        /*0080*/                   BRA.U !UP0, 0x40 ;
        /*0090*/                   UIADD3 UR4, UPT, UPT, UR4, 0x1, URZ ;
        /*00a0*/                   UISETP.NE.U32.AND UP1, UPT, UR4, 0x50, UPT ;
        /*00b0*/                   STG.E.64 desc[UR10][R2.64], R12 ;
        /*00c0*/                   BRA.U UP1, 0x20 ;
        /*00d0*/                   EXIT ;
        /*00e0*/                   BRA 0xe0;
"""

# sm_120's other loop form: an unconditional back edge, the exit on a predicate PLOP3 copies
# from the uniform compare
PLOP3_EXIT = """
        Function : _plop3_kernel
        /*0000*/                   UMOV.64 UR4, URZ ;
        /*0010*/                   FFMA R5, R6, R7, R5 ;
        /*0020*/                   UIADD3.64 UR4, UPT, UPT, UR4, 0x1, URZ ;
        /*0030*/                   UISETP.NE.U64.AND UP0, UPT, UR4, 0x52, UPT ;
        /*0040*/                   PLOP3.LUT P5, PT, PT, PT, UP0, 0x80, 0x8 ;
        /*0050*/              @!P5 EXIT ;
        /*0060*/                   BRA 0x10 ;
        /*0070*/                   BRA 0x70;
"""


def test_uniform_predicate_loops():
    from benchmarks.sass_model import branch_pred

    instrs = parse_sass(UNIFORM)
    assert instrs[5].operands == ["UR8", "UPT", "UPT", "UR8", "0x10", "URZ"]
    assert branch_pred(instrs[8]) == "!UP0" and instrs[8].target == 0x40
    assert branch_pred(instrs[12]) == "UP1" and branch_pred(instrs[14]) is None
    loops = find_loops(instrs)
    assert [(lp.trips, lp.resolved, lp.bound, lp.step) for lp in loops] == [
        (4, True, 0x40, 0x10),
        (80, True, 0x50, 1),
    ]
    c = dynamic_counts(instrs)
    assert (c.ffma, c.mma, c.unresolved) == (320, 320, 0)
    assert c.ld_bytes == 80 * 32 * 16 and c.st_bytes == 80 * 32 * 8


def test_plop3_exit_loop():
    loops = find_loops(parse_sass(PLOP3_EXIT))
    assert [(lp.trips, lp.resolved, lp.bound, lp.step) for lp in loops] == [(82, True, 0x52, 1)]


def test_rtx_5090_row():
    """The RTX 5090 (sm_120) beside the RTX 4090: NVIDIA's figures (benchmarks.sass_model)."""
    d, old = DEVICES["RTX 5090"], DEVICES["RTX 4090"]
    assert (d.arch, d.sms, d.bytes_per_s) == (120, 170, 1.792e12)
    assert abs(d.fp32_flops - 21760 * 2 * d.clock_hz) / d.fp32_flops < 1e-3
    # GeForce: tf32 at half the 16-bit rate (FP32 accumulate), as on the RTX 4090
    for dev in (d, old):
        assert abs(2 * dev.tf32_flops - dev.bf16_flops) / dev.bf16_flops < 1e-3
