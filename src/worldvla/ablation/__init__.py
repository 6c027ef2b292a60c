"""The paper's ablations (SPEC §1, §8) as one resumable command: ``worldvla ablate``.

``config`` names the variants and sizes the runs, ``runner`` trains and evaluates them over
shared data, ``aggregate`` turns their results into the paper's tables and a plot.
"""
