"""The morning review: a person ranks the top candidates in optuna-dashboard's preference page.
Must not import report/, demo/ or commands/.
"""
