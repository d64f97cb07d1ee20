"""The results store: one SQLite file per experiment directory, and the files beside it.

Owns the schema of every stored table (`schema`), the store that writes a run in one
transaction and reads it back (`results`), and the directory's lock, pending run folders and
the errors of an unusable store (`directory`). Imports nothing of diffscale's: every other
package may read or write results through it.
"""
