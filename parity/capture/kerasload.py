"""Reading Keras files: ``.keras``/``.h5`` (Keras 3, or Keras 2 files through ``tf_keras``) and
the SavedModel directories Keras 2's ``model.save(dir)`` wrote.
:class:`~parity.capture.keras.KerasBackend` loads through :func:`load_keras`; Keras is imported
when a file is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelError

__all__ = ["load_keras", "load_keras2_saved_model", "saved_by_keras2"]


def load_keras(path: Path, *, safe_mode: bool = True, **options: Any) -> Any:
    """The Keras model saved at ``path``: loaded with ``safe_mode=True`` (``safe_mode=False`` to
    opt in to code); an H5 file of Keras 2 that Keras 3 cannot rebuild (``TFOpLambda`` layers)
    with ``tf_keras``; a directory as a Keras 2 SavedModel."""
    if path.is_dir():
        return load_keras2_saved_model(path, **options)
    import keras

    suffix = path.suffix.lower()
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode, **options)
    except TypeError as exc:  # a class or function the config names that Keras cannot find
        from ..trust import keras_load_error

        raise keras_load_error(path, exc) from exc
    except ValueError as exc:
        if "safe_mode" in str(exc) or ("lambda" in str(exc).lower() and "TFOpLambda" not in str(exc)):
            raise _lambda_refused(path) from exc
        if suffix != ".h5" or str(keras.__version__).startswith("2.") or not saved_by_keras2(path):
            raise  # (where keras is Keras 2 itself, tf_keras would not do better)
        return _load_with_tf_keras(path, exc, safe_mode, **options)


def _lambda_refused(path: Path) -> ModelError:
    from ..errors import UntrustedModel
    from ..trust import TRUST_HINT

    return UntrustedModel(
        f"{str(path)!r} holds code (a Lambda layer) that Keras refuses to load in safe mode. {TRUST_HINT} "
        "(parity.load(path, safe_mode=False) opts in to Keras code only.)",
        path=path, found=["a Lambda layer"],
    )


def saved_by_keras2(path: Path) -> bool:
    """Whether an HDF5 model file says it was written by Keras 2 (tf_keras, or keras ≤ 2.15)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", b"")
    except (ImportError, OSError):
        return False
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.startswith("2.")


def load_keras2_saved_model(path: Path, **options: Any) -> Any:
    """A SavedModel written by Keras 2's ``model.save(dir)``, as the live tf_keras model (its
    layers, names and weights) rather than as a graph; Keras 3 cannot load these."""
    if not (path / "keras_metadata.pb").exists():
        raise ModelError(
            f"{str(path)!r} is not a SavedModel written by Keras 2's model.save (it has no keras_metadata.pb), "
            "so there is no Keras model to rebuild. Load it as a TensorFlow graph: parity.load(path) without keras=True."
        )
    try:
        import tf_keras
    except ImportError as exc:
        raise ModelError(
            f"{str(path)!r} is a Keras 2 SavedModel; loading it as a Keras model needs Keras 2: "
            "pip install tf-keras==<your tensorflow version>. Or load it as a graph: parity.load(path)."
        ) from exc
    return tf_keras.models.load_model(path, compile=False, **options)


def _load_with_tf_keras(path: Path, keras3_error: Exception, safe: bool, **options: Any) -> Any:
    """A Keras 2 H5 file that Keras 3 cannot rebuild (``TFOpLambda`` layers from
    ``tf.*`` calls, as nobuco writes them), loaded with Keras 2 itself: ``tf_keras``."""
    try:
        import tf_keras
    except ImportError:
        raise ModelError(
            f"{str(path)!r} was saved by Keras 2 and Keras 3 cannot load it ({type(keras3_error).__name__}: "
            f"{str(keras3_error).strip()[:300]}). Install Keras 2 for your TensorFlow, e.g. "
            "pip install tf-keras==<your tensorflow version>, and parity loads it with tf_keras."
        ) from keras3_error
    try:
        return tf_keras.models.load_model(path, compile=False, safe_mode=safe, **options)
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise _lambda_refused(path) from exc
        raise ModelError(
            f"{str(path)!r} was saved by Keras 2 and neither Keras 3 ({str(keras3_error).strip()[:200]}) "
            f"nor tf_keras ({type(exc).__name__}: {str(exc).strip()[:300]}) can load it. Save the model "
            "again, or pass the live model object."
        ) from exc
