"""The CVAE video-prediction model, its data, its trainer and the final-model outputs. Knows nothing of Optuna.

Import from the modules themselves (`from model.train import train`); docs/ARCHITECTURE.md, "The parts".
"""
