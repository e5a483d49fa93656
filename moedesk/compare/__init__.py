"""Dense-vs-MoE comparisons (seed 002): does the variant help beyond seed-to-seed noise?

`protocol` checks that two profiles differ only in their model and runs both for each
seed through the real runner; `results` reads the runs back from the store into a
manifest; `verdict` decides adopt | defer | never; `findings` holds the manifest's views
(findings.md, the table, the verdict line);
`routing` reads the trainer's routing analysis. No torch anywhere in this package.

Public API (CLI and TUI):
  make_plan, execute, run_ids          plan and run a comparison
  compare_runs(home, base_ids, var_ids) the manifest for runs already in the store
  write_outputs(manifest, out_dir)     manifest.json + findings.md
  load(path), find_manifests(home)     read manifests back
  table_rows(manifest), verdict_line(manifest)  what a compare view shows
  decide(...)                          the verdict rule on per-seed numbers
  pair_runs, verdict_for_runs          a verdict for any finished runs that form a pair set
"""

from moedesk.compare.findings import table_rows, verdict_line, write_outputs
from moedesk.compare.pairing import pair_runs, verdict_for_runs
from moedesk.compare.protocol import check_pair, execute, make_plan, protocol_differences, run_ids
from moedesk.compare.results import CompareError, build_manifest, compare_runs, find_manifests, load
from moedesk.compare.verdict import Cost, Verdict, decide

__all__ = ["CompareError", "check_pair", "execute", "make_plan", "protocol_differences",
           "run_ids", "build_manifest", "compare_runs", "find_manifests", "load", "table_rows",
           "verdict_line", "write_outputs", "Cost", "Verdict", "decide", "pair_runs",
           "verdict_for_runs"]
