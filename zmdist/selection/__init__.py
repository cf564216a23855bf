"""Choosing what to label, the parts that are not pure math: reading the pool from embedding files,
the dropout linear probe, the UP-DP model, the strategies' dispatcher and the active-learning simulation.

The selection rules themselves are pure functions in ``zmdist.methods.selection`` / ``kmeans`` / ``updp``;
the stages ``zmdist select`` and ``zmdist al-sim`` wire these parts together.
"""
