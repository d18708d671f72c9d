"""experiments.overlap: reading the compiled schedule for overlapped permutes."""

from experiments import overlap

SCHEDULED = """HloModule step, is_scheduled=true

%branch.1 (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %cp.2 = (f32[8]{0}, f32[8]{0}) collective-permute-start(%p), source_target_pairs={{0,1},{1,0}}
  %cp-done.2 = f32[8]{0} collective-permute-done(%cp.2)
  ROOT %r = f32[8]{0} add(%p, %cp-done.2)
}

ENTRY %main (x: f32[8], w: f32[8,8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %cp.1 = (f32[8]{0}, f32[8]{0}) collective-permute-start(%x), source_target_pairs={{0,1},{1,0}}
  %fusion.3 = f32[8,8]{1,0} fusion(%w), kind=kLoop, calls=%fused
  %dot.4 = f32[8]{0} dot(%fusion.3, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %cp-done.1 = f32[8]{0} collective-permute-done(%cp.1)
  ROOT %out = f32[8]{0} add(%dot.4, %cp-done.1)
}
"""


def test_counts_compute_between_start_and_done():
  found = overlap.overlap_report(SCHEDULED)
  assert [(p["computation"], p["start"], p["compute_between"]) for p in found] == [
    ("branch.1", "cp.2", 0),
    ("main", "cp.1", 2),
  ]


def test_synchronous_permutes_are_not_reported():
  assert (
    overlap.overlap_report(
      "ENTRY %m (x: f32[2]) -> f32[2] {\n"
      "  ROOT %c = f32[2]{0} collective-permute(%x), source_target_pairs={{0,1}}\n}"
    )
    == []
  )
