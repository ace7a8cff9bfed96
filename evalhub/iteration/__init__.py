"""The iteration loop: checkpoints scored by a suite, experiments over many jobs, reproduction.

It sits above the capabilities it joins (fine-tuning, evaluation, the local engine), which never
import each other.
"""
