"""What the results mean: tidy tables, plots and reports from the store, the operator model, and
the projection of traces onto hardware profiles and papers' tables.

Reads what `suite.store` holds and the traces of `suite.measure`; may import every `suite`
package except `suite.commands`, which sits above it.
"""
