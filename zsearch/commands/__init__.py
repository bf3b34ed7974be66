"""The `zsearch` sub-commands: arguments in, one-line messages out. Every layer below may be imported
here; only cli.py imports commands/, and commands must not import cli.py.
"""
