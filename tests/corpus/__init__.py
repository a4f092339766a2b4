"""A corpus of real architectures (timm, transformers, keras-hub, keras.applications, nobuco)
converted by real converters: the measure of whether parity is right on models nobody here wrote.

``cases.py`` defines what a case is and how its outcome is judged; each source has a module of
cases; ``run.py`` runs them and writes ``reports/corpus.md``.
"""
