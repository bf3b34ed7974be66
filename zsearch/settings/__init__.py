"""The search config: its schema, reading it with paths resolved, checks of its inputs, its fingerprint.
Must not import study/, search/, outputs/ or anything above them.
"""
