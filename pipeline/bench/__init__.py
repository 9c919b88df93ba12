"""`trtllm-pipeline bench`: latency, throughput and peak memory of built engines, beside the plan.

stats (pure timing figures), workload (what to run, clamped to a profile),
harness (drives a runner), served (drives a Triton server), memory (peak
memory probes), reference (plan ceilings, the published estimate), results
(the typed report), machine (load and clocks), sweetspot (operating points, the recommendation),
report (bench.md), plots (the PNGs), files (writes them all), summary (the terminal table), run
(the command).
"""
