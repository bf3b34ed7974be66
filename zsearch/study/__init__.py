"""The Optuna study: its storage (storage.py), the one study opener (opening.py), every record key (records.py), the one best-trial
rule (choice.py), statistics, samplers, workers and budget. Must not import search/, outputs/, review/ or report/.
"""
