"""The offline demo: tiny random models of the real classes, LoRAs with a look, references and their judge.
Must not import search/, study/, review/, report/ or commands/: the command builds it at its edge.
"""
