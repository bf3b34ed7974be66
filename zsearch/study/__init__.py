"""The Optuna study: storage and the one study opener, every record key (records.py), the one best-trial
rule (choice.py), statistics, samplers, workers and budget. Must not import search/, outputs/, review/ or report/.
"""
