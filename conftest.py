"""Repository-level pytest set-up.

TensorFlow logs a great deal at import; tests quiet it here rather than the
library quieting a user's environment.  The parity plugin is registered by its
``pytest11`` entry point once installed; listing it here makes the repository's
own suite work from a plain checkout as well.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

pytest_plugins = ["parity.plugin"]
