"""What a rank measures besides the ledger, and the arithmetic of its timeline.

`intervals` (time covered by overlapping intervals: comm_s, exposed_comm_s), `optrace` (the
operator-trace format, numpy only), `op_recorder` (the aten-op recorder of analytic worlds),
`profiling` (torch.profiler, NVML, the ledger as a Chrome trace) and `calibrate_ops` (operator
efficiency curves of the local device). May import `suite.distributed`, `suite.store` and
`workloads`.
"""
