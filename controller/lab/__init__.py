"""The lab: the demo, the simulated cluster and the benchmarks.

The only controller code that imports the agent (its simulator and its load generator), so that
what runs in production never depends on the simulation.
"""
