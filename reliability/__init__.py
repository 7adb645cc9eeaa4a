"""Reliability and security checks with figures: fuzzing, load and soak, fault cases (issue 7).

python -m reliability fuzz | soak | faults | report     (results/reliability.md)
"""
