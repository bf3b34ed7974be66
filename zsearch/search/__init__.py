"""The night's loop: run, session, objective, evaluation, pruning, trust (noise, validation), progress, log.
Must not import review/, report/, demo/ or commands/.
"""
