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
