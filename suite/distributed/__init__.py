"""How ranks are arranged and how they talk: the device mesh and the comm ledger.

`mesh` holds the parallel degrees and builds the one named `DeviceMesh` (torch-free until a
mesh is built, so config validation can use the degrees); `comm` is the ledger through which
every collective of every strategy goes. May import `suite.store` and `workloads` only.
"""
