"""Starting worlds and running a `RunSpec` on them, rank by rank, up to the run's record.

`launch` (a spawned local world, torchrun's world, fake and analytic emulation), `rank_process`
(a spawned rank bound to its parent's life, torch-free), `rank_worker` (a spawned rank's loop),
`runner` (one rank's run: build, parallelize, warm up, time), `analytic_run` and `replicate`
(ranks on the meta device, steady steps replicated), `record` (per-rank results to the stored
rows and files). May import every package below it: `suite.fidelity`, `suite.config`,
`suite.parallel`, `suite.measure`, `suite.distributed`, `suite.store`, `workloads`.
"""
