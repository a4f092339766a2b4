"""A dataset as batches: whatever the user hands :func:`parity.evaluate`, read one batch at a time.

Kinds of ``data`` (inputs in model A's layout, as for :func:`parity.diff`):

- an array (all samples of one input), a dict of them by input name, or a tuple ``(x, y)`` of
  inputs and labels — cut into batches of ``batch_size``;
- a ``.npy`` file, an uncompressed ``.npz`` (one member per input; a member ``labels`` or
  ``label`` holds the labels), or a directory of either (chunks of samples, in name order; a
  ``labels.npy`` there holds the labels) — memory-mapped, never read whole;
- an iterable of batches (a list, a generator, a torch ``DataLoader``): each an array, a list of
  arrays (several inputs), a dict by input name, or ``(x, y)`` — inputs and integer labels;
- a ``tf.data.Dataset`` of batches, or a Ray Dataset (read with ``iter_batches``).

Array and file data can be read at any batch by position (:meth:`Source.batch`), so a Ray
worker reads its own shard and a resumed run skips what it has counted; the others are read
in order.  Every refusal is a :class:`~parity.errors.DataError` saying what came, what was
expected and what to do.
"""

from __future__ import annotations

import mmap
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import DataError, LabelsError

__all__ = ["Batch", "Source", "ArraySource", "IterableSource", "as_source", "LABEL_KEYS"]

#: names of a dict member / .npz member / Ray Dataset column that holds the labels, not an input
LABEL_KEYS = ("labels", "label")
DEFAULT_BATCH = 32


@dataclass
class Batch:
    """One batch: its position, the index of its first sample, its inputs (a list of arrays or
    a dict by input name, in A's layout) and its labels (or None)."""

    index: int
    start: int
    inputs: Any
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        first = next(iter(self.inputs.values())) if isinstance(self.inputs, dict) else self.inputs[0]
        return int(first.shape[0])


def _to_numpy(obj: Any, where: str) -> np.ndarray:
    arr = _as_numpy(obj, where)
    # read-only batches (tf.data's, a memory map's) are copied: torch refuses to wrap them quietly
    return arr if arr.flags.writeable else arr.copy()


def _as_numpy(obj: Any, where: str) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
        return obj.detach().cpu().numpy()
    if hasattr(obj, "numpy") and callable(obj.numpy):  # a tf.Tensor
        return np.asarray(obj.numpy())
    if hasattr(obj, "__array__") or isinstance(obj, (list, int, float)):
        return np.asarray(obj)
    raise DataError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; expected an array (NumPy, or a torch/TF "
        "tensor). A batch is an array, a list of arrays (one per input), a dict by input name, or (x, y)."
    )


def check_labels(y: Any, where: str, n: int | None = None) -> np.ndarray:
    """``y`` as a 1-D integer array of class ids (``n`` of them when given)."""
    arr = _to_numpy(y, where)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise LabelsError(
            f"{where} has shape {tuple(arr.shape)}; expected one integer class id per sample (shape (N,)). "
            "One-hot labels: pass y.argmax(1)."
        )
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise LabelsError(
            f"{where} has dtype {arr.dtype}; expected integer class ids. Cast them, e.g. y.astype('int64'), "
            "if they are whole numbers."
        )
    if n is not None and len(arr) != n:
        raise LabelsError(
            f"{where} holds {len(arr)} labels for {n} samples; give exactly one label per sample, in the "
            "order of the data."
        )
    return arr


def _is_labels(obj: Any) -> bool:
    """A 1-D integer array: the y of (x, y) (a second input that is one needs a dict by name)."""
    shape = getattr(obj, "shape", None)
    dtype = getattr(obj, "dtype", None)
    if shape is None or len(shape) != 1:
        return False
    name = str(dtype)
    return "int" in name or name.endswith("bool")


def split_batch(element: Any, where: str) -> tuple[Any, np.ndarray | None]:
    """One element of an iterable of batches → (inputs as arrays, labels or None)."""
    if isinstance(element, Mapping):
        labels = next((element[k] for k in LABEL_KEYS if k in element), None)
        inputs = {str(k): _to_numpy(v, f"{where}, input {k!r}") for k, v in element.items() if k not in LABEL_KEYS}
        if not inputs:
            raise DataError(f"{where} is a dict without inputs (only {sorted(element)}); give one array per model input.")
        y = check_labels(labels, f"{where}, labels") if labels is not None else None
        return inputs, y
    if isinstance(element, (tuple, list)):
        if not element:
            raise DataError(f"{where} is an empty {type(element).__name__}; a batch is an array, a list of "
                            "arrays, a dict by input name, or (x, y).")
        if len(element) == 2:
            x, y = element
            if getattr(y, "ndim", None) == 0 or isinstance(y, (int, np.integer)):
                raise DataError(
                    f"{where} is (x, y) with a single label ({y!r}): the data holds single samples, not batches. "
                    "Batch them, e.g. dataset.batch(32) for tf.data or DataLoader(dataset, batch_size=32)."
                )
            if _is_labels(y) or isinstance(x, (tuple, list, Mapping)):
                inputs, _ = split_batch(x, where) if isinstance(x, (tuple, list, Mapping)) else (
                    [_to_numpy(x, f"{where}, input 0")], None)
                return inputs, check_labels(y, f"{where}, labels")
        return [_to_numpy(v, f"{where}, input {i}") for i, v in enumerate(element)], None
    return [_to_numpy(element, f"{where}, input 0")], None


def _batch_length(inputs: Any, labels: np.ndarray | None, where: str) -> int:
    arrays = list(inputs.items()) if isinstance(inputs, dict) else list(enumerate(inputs))
    sizes = {}
    for k, a in arrays:
        if a.ndim == 0:
            raise DataError(f"{where}, input {k!r} is a scalar; expected a batch of samples (samples on axis 0). "
                            "If the data holds single samples, batch them (dataset.batch(32), DataLoader(batch_size=32)).")
        sizes[k] = int(a.shape[0])
    if len(set(sizes.values())) > 1:
        raise DataError(
            f"{where}: the inputs hold different numbers of samples ({', '.join(f'{k!r}: {v}' for k, v in sizes.items())}); "
            "every input of a batch needs one row per sample."
        )
    n = next(iter(sizes.values()))
    if labels is not None and len(labels) != n:
        raise LabelsError(f"{where} holds {len(labels)} labels for {n} samples; give one label per sample.")
    return n


class Source:
    """Batches of a dataset, read in order (:meth:`batches`) or, for array and file data, at any
    position (:meth:`batch`)."""

    #: the number of samples, when known before reading
    length: int | None = None
    #: whether :meth:`batch` reads any batch by position (and the source pickles small)
    random_access: bool = False
    #: whether the batches carry labels (None: not known until read)
    has_labels: bool | None = None

    def describe(self) -> str:
        raise NotImplementedError

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """The batches from position ``start`` on."""
        raise NotImplementedError

    def batch(self, k: int) -> Batch:
        raise NotImplementedError(f"{self.describe()} is read in order only")

    @property
    def num_batches(self) -> int | None:
        return None


class _Column:
    """One input (or the labels) of array/file data: chunks of samples, read by sample range."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks  # arrays, or callables that open one (memory maps, reopened after pickling)
        self._open: list[np.ndarray] | None = None

    def arrays(self) -> list[np.ndarray]:
        if self._open is None:
            self._open = [c() if callable(c) else c for c in self.chunks]
        return self._open

    def __getstate__(self) -> dict:
        # a memory map is shipped as the way to open it (a path), never as its data
        return {"chunks": self.chunks, "_open": None if any(callable(c) for c in self.chunks) else self._open}

    def __len__(self) -> int:
        return sum(int(a.shape[0]) for a in self.arrays())

    def take(self, start: int, stop: int) -> np.ndarray:
        parts = []
        offset = 0
        for a in self.arrays():
            n = int(a.shape[0])
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                parts.append(np.array(a[lo:hi]))  # a copy of the batch: the file stays read-only
                _release(a, lo, hi)
            offset += n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _release(a: np.ndarray, lo: int, hi: int) -> None:
    """Drop rows ``lo:hi`` of a memory map from this process once copied out: the pages stay in
    the page cache, but the process's resident memory no longer grows with the file it has read
    (a mapped page, once touched, counts in RSS until the kernel or we let it go)."""
    mm = getattr(a, "_mmap", None)
    if mm is None or not a.flags.c_contiguous or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row = int(a.strides[0]) if a.ndim else a.itemsize
    start = int(getattr(a, "offset", 0)) % mmap.ALLOCATIONGRANULARITY + lo * row
    first = start - start % mmap.PAGESIZE
    length = start + (hi - lo) * row - first
    try:
        mm.madvise(mmap.MADV_DONTNEED, first, min(length, len(mm) - first))
    except (OSError, ValueError):  # not supported here: the kernel reclaims the pages itself
        pass


class ArraySource(Source):
    """Array or file data: columns of samples, cut into batches of ``batch_size``."""

    random_access = True

    def __init__(self, columns: dict[str | int, _Column], labels: _Column | None, batch_size: int, what: str) -> None:
        self.columns, self.labels, self.batch_size, self.what = columns, labels, batch_size, what
        sizes = {k: len(c) for k, c in columns.items()}
        if len(set(sizes.values())) > 1:
            raise DataError(
                f"{what}: the inputs hold different numbers of samples ({', '.join(f'{k!r}: {v}' for k, v in sizes.items())}); "
                "every input needs one row per sample."
            )
        self.length = next(iter(sizes.values()))
        if self.length == 0:
            raise DataError(f"{what} holds no samples; give at least one.")
        self.has_labels = labels is not None
        if labels is not None:
            for a in labels.arrays():
                check_labels(a[:0], f"the labels of {what}")
            if len(labels) != self.length:
                raise LabelsError(
                    f"{what} holds {self.length} samples but {len(labels)} labels; give exactly one label per "
                    "sample, in the order of the data."
                )

    def describe(self) -> str:
        return self.what

    @property
    def file_backed(self) -> bool:
        """Whether every column is read from files (so a worker can open them itself)."""
        cols = list(self.columns.values()) + ([self.labels] if self.labels is not None else [])
        return all(callable(c) for col in cols for c in col.chunks)

    @property
    def num_batches(self) -> int:
        assert self.length is not None
        return -(-self.length // self.batch_size)

    def batch(self, k: int) -> Batch:
        assert self.length is not None
        start, stop = k * self.batch_size, min((k + 1) * self.batch_size, self.length)
        named = all(isinstance(key, str) for key in self.columns)
        cols = {key: c.take(start, stop) for key, c in self.columns.items()}
        inputs: Any = cols if named else [cols[key] for key in sorted(cols, key=int)]
        y = check_labels(self.labels.take(start, stop), f"the labels of {self.what}") if self.labels else None
        return Batch(k, start, inputs, y)

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for k in range(start, self.num_batches):
            yield self.batch(k)


class IterableSource(Source):
    """Batches read in order from an iterable (re-iterable ones, like a DataLoader, are read
    afresh by each :meth:`batches`)."""

    def __init__(self, make: Any, what: str, length: int | None = None) -> None:
        self.make, self.what, self.length = make, what, length
        self._consumed = False

    def describe(self) -> str:
        return self.what

    def batches(self, start: int = 0) -> Iterator[Batch]:
        it = self.make()
        if it is None:
            raise DataError(f"{self.what} was read already: a generator is read once. Pass a list or a "
                            "re-iterable object (a DataLoader, a function's result made again).")
        sample = 0
        for k, element in enumerate(it):
            where = f"batch {k} of {self.what}"
            inputs, labels = split_batch(element, where)
            n = _batch_length(inputs, labels, where)
            if k >= start:
                yield Batch(k, sample, inputs, labels)
            sample += n


def _npy(path: Path) -> Any:
    def open_() -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{str(path)!r} is not a plain .npy array ({exc}); save it with np.save(path, array).") from exc
    return _Opener(open_, str(path))


class _Opener:
    """A picklable callable that opens one chunk (a memory map) on first use."""

    def __init__(self, fn: Any, what: str) -> None:
        self.fn, self.what = fn, what

    def __call__(self) -> np.ndarray:
        return self.fn()

    def __getstate__(self) -> dict:
        return {"what": self.what}

    def __setstate__(self, state: dict) -> None:
        self.what = state["what"]
        path, _, member = self.what.partition("::")
        self.fn = (lambda: _npz_member(Path(path), member)) if member else (lambda: np.load(path, mmap_mode="r"))


def _npz_member(path: Path, member: str) -> np.ndarray:
    """A member of an uncompressed .npz as a memory map of the file (np.load would read it whole)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise DataError(
                f"{str(path)!r} is compressed (np.savez_compressed), and a compressed member cannot be memory-mapped: "
                "it would be read whole. Save it with np.savez (uncompressed), or as .npy files in a directory."
            )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        data_start = info.header_offset + 30 + name_len + extra_len
        f.seek(data_start)
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"{str(path)!r} member {member!r} holds Python objects; save numeric arrays.")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _npz_members(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile as exc:
        raise DataError(f"{str(path)!r} is not an .npz archive ({exc}); save it with np.savez(path, x=..., labels=...).") from exc


def _file_columns(files: list[Path], what: str) -> tuple[dict[str | int, _Column], _Column | None]:
    """Columns of a list of .npy files (chunks of one input) or .npz files (chunks of named inputs)."""
    suffixes = {f.suffix for f in files}
    if suffixes == {".npy"}:
        labels = [f for f in files if f.stem in LABEL_KEYS]
        chunks = [f for f in files if f.stem not in LABEL_KEYS]
        if not chunks:
            raise DataError(f"{what} holds labels but no inputs; add .npy files of samples.")
        cols: dict[str | int, _Column] = {0: _Column([_npy(f) for f in chunks])}
        return cols, _Column([_npy(f) for f in labels]) if labels else None
    if suffixes == {".npz"}:
        members = [_npz_members(f) for f in files]
        if any(set(m) != set(members[0]) for m in members):
            raise DataError(f"{what}: the .npz files hold different members ({', '.join(sorted(set().union(*members)))}); "
                            "every chunk needs the same inputs.")
        names = [m for m in members[0] if m not in LABEL_KEYS]
        label = next((m for m in members[0] if m in LABEL_KEYS), None)
        if not names:
            raise DataError(f"{what} holds no inputs (members: {', '.join(members[0]) or 'none'}).")

        def col(member: str) -> _Column:
            return _Column([_Opener(lambda f=f: _npz_member(f, member), f"{f}::{member}") for f in files])

        keyed: dict[str | int, _Column] = {0: col(names[0])} if len(names) == 1 else {n: col(n) for n in names}
        return keyed, col(label) if label else None
    raise DataError(f"{what}: expected .npy or .npz files (not both); got {', '.join(sorted(suffixes))}.")


def as_source(data: Any, labels: Any = None, batch_size: int = DEFAULT_BATCH) -> Source:
    """The :class:`Source` reading ``data`` (see the module docstring), with ``labels`` (an
    array, a tensor or a ``.npy`` path) when the data does not carry its own."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}.")
    source = _source(data, batch_size)
    if labels is None:
        return source
    if source.has_labels:
        raise LabelsError(f"{source.describe()} carries labels already, and labels= gives them again; give them once.")
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise LabelsError(f"labels file {str(path)!r} does not exist; give a .npy of one class id per sample.")
        column = _Column([_npy(path)])
        what = f"labels file {str(path)!r}"
    else:
        arr = check_labels(labels, "labels")
        column, what = _Column([arr]), "labels"
    if isinstance(source, ArraySource):
        first = column.arrays()[0]
        check_labels(first[:0], what)
        if len(column) != source.length:
            raise LabelsError(
                f"{what} holds {len(column)} labels for {source.length} samples of {source.describe()}; give exactly "
                "one label per sample, in the order of the data."
            )
        source.labels, source.has_labels = column, True
        return source
    if source.length is not None and len(column) != source.length:
        raise LabelsError(f"{what} holds {len(column)} labels for {source.length} samples of {source.describe()}; "
                          "give exactly one label per sample.")
    return _LabelledSource(source, column, what)


class _LabelledSource(Source):
    """An iterable's batches with labels taken from a separate array, by sample index."""

    def __init__(self, inner: Source, labels: _Column, what: str) -> None:
        self.inner, self.labels, self.what = inner, labels, what
        self.length, self.has_labels = inner.length, True

    def describe(self) -> str:
        return self.inner.describe()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        total = len(self.labels)
        for b in self.inner.batches(start):
            if b.labels is not None:
                raise LabelsError(f"batch {b.index} of {self.describe()} carries labels, and labels= gives them too; "
                                  "give them once.")
            if b.start + b.size > total:
                raise LabelsError(f"{self.what} holds {total} labels, but {self.describe()} has more samples "
                                  f"(batch {b.index} reaches sample {b.start + b.size}); give one label per sample.")
            b.labels = check_labels(self.labels.take(b.start, b.start + b.size), self.what)
            yield b


def _source(data: Any, batch_size: int) -> Source:
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise DataError(f"data {str(path)!r} does not exist; give a .npy/.npz file or a directory of them.")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
            if not files:
                raise DataError(f"directory {str(path)!r} holds no .npy or .npz files; put the samples there as "
                                "chunks (np.save('000.npy', x)), read in name order.")
            what = f"directory {str(path)!r}"
        elif path.suffix in (".npy", ".npz"):
            files, what = [path], f"{str(path)!r}"
        else:
            raise DataError(f"data file {str(path)!r} is neither .npy nor .npz; save the samples with np.save "
                            "or np.savez (uncompressed), or pass an iterable of batches.")
        # opened by absolute path: a Ray worker reading its shard runs in another directory
        columns, labels = _file_columns([f.resolve() for f in files], what)
        return ArraySource(columns, labels, batch_size, what)
    if isinstance(data, np.ndarray):
        return ArraySource({0: _Column([data])}, None, batch_size, f"an array of shape {tuple(data.shape)}")
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], np.ndarray) and isinstance(
            data[0], (np.ndarray, dict)):
        x, y = data
        inner = _source(x, batch_size)
        assert isinstance(inner, ArraySource)
        inner.labels, inner.has_labels = _Column([check_labels(y, "the labels (y of (x, y))")]), True
        if len(inner.labels) != inner.length:
            raise LabelsError(f"(x, y) holds {inner.length} samples but {len(inner.labels)} labels; give one label per sample.")
        return inner
    if isinstance(data, Mapping) and data and all(isinstance(v, np.ndarray) for v in data.values()):
        labels = next((data[k] for k in LABEL_KEYS if k in data), None)
        cols: dict[str | int, _Column] = {str(k): _Column([v]) for k, v in data.items() if k not in LABEL_KEYS}
        if not cols:
            raise DataError("data is a dict of labels only; add one array of samples per model input.")
        return ArraySource(cols, _Column([check_labels(labels, "data['labels']")]) if labels is not None else None,
                           batch_size, f"a dict of arrays ({', '.join(map(str, cols))})")
    module = type(data).__module__ or ""
    if module.startswith("ray.data") and hasattr(data, "iter_batches"):
        count = None
        return IterableSource(lambda: data.iter_batches(batch_size=batch_size, batch_format="numpy"),
                              "a Ray Dataset", count)
    if module.startswith("tensorflow") and hasattr(data, "as_numpy_iterator"):
        return IterableSource(data.as_numpy_iterator, "a tf.data.Dataset")
    if module.startswith("torch.utils.data"):
        dataset = getattr(data, "dataset", None)
        length = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        return IterableSource(lambda: iter(data), "a torch DataLoader", length)
    if isinstance(data, (list, tuple)):
        if not data:
            raise DataError("data is an empty list: no batches to compare. Give at least one batch.")
        items = list(data)
        return IterableSource(lambda: iter(items), f"a list of {len(items)} batches")
    if hasattr(data, "__next__"):
        state = {"used": False}

        def once() -> Any:
            if state["used"]:
                return None
            state["used"] = True
            return data

        return IterableSource(once, f"a {type(data).__name__}")
    if hasattr(data, "__iter__") and not isinstance(data, (str, bytes, Mapping)):
        return IterableSource(lambda: iter(data), f"a {type(data).__name__}")
    raise DataError(
        f"data is a {module}.{type(data).__qualname__}; expected an array, a dict of arrays, (x, y), a .npy/.npz "
        "path or a directory of them, an iterable of batches (arrays, lists of arrays, dicts, (x, y)), a torch "
        "DataLoader, a tf.data.Dataset or a Ray Dataset."
    )
