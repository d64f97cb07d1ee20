"""How diffscale runs: one package per job, each importing only the packages below it.

From the bottom up (checked by `lint-imports`, contracts in `.importlinter`):

- `store`: the results store (SQLite schema, rows in and out, the directory's lock);
- `distributed`: the device mesh and the comm ledger every strategy talks through;
- `measure`: what a rank measures besides the ledger (intervals, operator traces, profilers);
- `parallel`: the strategies, generic over per-model plans;
- `config`: experiment configs, validated before any process starts (memory estimate included);
- `fidelity`: outputs scored against the single-device baseline;
- `worlds`: starting worlds (spawned, torchrun, fake, analytic), a rank's run, its record;
- `commands`: the `diffscale` commands (above `analysis`, which reads what the store holds).

`suite.results` and `suite.cli` are the old paths, kept one release as re-exports.
"""

__version__ = "0.1.0"
