"""The `diffscale` commands: the top of the import layers.

`cli` (argument parsing and dispatch), `cli_checks` (arguments checked before anything heavy
loads), `sweep` (run an experiment's grid with resume), `reproduce` (a paper's table as analytic
worlds projected on its hardware) and `calibrate` (measure this machine into a hardware
profile). May import everything, `analysis` included; nothing imports it.
"""
