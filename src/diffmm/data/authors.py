"""The DiffMM authors' folder: ``trnMat/valMat/tstMat.pkl`` and ``<modality>_feat.npy``.

The three split matrices may also be named as other repositories ship them (one name of
each role, see :data:`AUTHOR_NAMES`): train ``trnMat.pkl`` or ``<name>_train.pkl``;
valid ``valMat.pkl``, ``vldMat.pkl``, ``<name>_valid.pkl`` or ``<name>_val.pkl``; test
``tstMat.pkl`` or ``<name>_test.pkl``. A matrix with fewer rows or columns than the others
(its last users/items never appear in that split) is padded with empty ones, with a
warning; one larger than both others is refused.

The pickles are read with :class:`RestrictedUnpickler`, which admits only what pickles of
numpy arrays and scipy.sparse matrices need, for every pickle protocol (0 to 5):

* the scipy.sparse matrix/array classes, ``numpy.ndarray``, ``numpy.dtype`` (and the
  ``numpy.dtypes`` classes), numpy's own array/scalar reconstructors;
* for protocols 0-2, wrapped so that nothing else can be built or called:
  ``copyreg._reconstructor`` only for a scipy.sparse class on ``object`` (or on ``dict``,
  for ``dok``); ``_codecs.encode`` only as the ``(str, "latin1") -> bytes`` decoder that
  pickles of bytes use; ``bytes()`` only with no argument (an empty buffer);
* for protocol 5, ``numpy._core.numeric._frombuffer`` only on a bytes-like buffer.

``builtins.object`` and ``builtins.dict`` are admitted only as the base-class argument of
``_reconstructor`` (placeholders that cannot be called). Anything else is refused with a
:class:`DataError` before any of the pickle runs.
"""

from __future__ import annotations

import copyreg
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from diffmm.data.checks import check_interaction_values
from diffmm.data.dataset import Dataset, build_dataset
from diffmm.data.feature_files import feat_files, load_feat_files
from diffmm.errors import DataError

AUTHOR_FILES = ("trnMat.pkl", "valMat.pkl", "tstMat.pkl")
#: The accepted file names of each split matrix, first choice first (``*`` = any name).
AUTHOR_NAMES = {
    "train": ("trnMat.pkl", "*_train.pkl"),
    "valid": ("valMat.pkl", "vldMat.pkl", "*_valid.pkl", "*_val.pkl"),
    "test": ("tstMat.pkl", "*_test.pkl"),
}


def _sparse_classes() -> dict[str, type]:
    names = ("coo", "csr", "csc", "bsr", "dia", "lil", "dok")
    out = {}
    for n in names:
        for kind in ("matrix", "array"):
            cls = getattr(sp, f"{n}_{kind}", None)
            if cls is not None:
                out[f"{n}_{kind}"] = cls
    return out


def _numpy_attr(module: str, name: str) -> Any:
    """``numpy._core.<module>.<name>`` (numpy >= 2), else ``numpy.core.<module>.<name>``."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):  # numpy < 2
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


class _Base:
    """A placeholder for ``builtins.object``/``dict``: only ``_reconstructor`` accepts it."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __repr__(self) -> str:
        return f"builtins.{self.cls.__name__}"


_OBJECT, _DICT = _Base(object), _Base(dict)
_BUILTINS = ("builtins", "__builtin__")
_COPYREG = ("copyreg", "copy_reg")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy arrays/dtypes and scipy.sparse matrices."""

    _NUMPY_CORE = ("numpy.core", "numpy._core")

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles of numpy arrays
        self.source = source
        self._sparse = tuple(_sparse_classes().values())

    def _refuse(self, what: str) -> DataError:
        return DataError(
            f"{self.source}: refuses to load {what} from {self.source}: only numpy arrays "
            "and scipy.sparse matrices are allowed in dataset pickles (the file may be "
            "malicious or not a dataset file)"
        )

    def find_class(self, module: str, name: str) -> Any:
        core, _, sub = module.rpartition(".")
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if core in self._NUMPY_CORE and (sub, name) in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
        ):
            return _numpy_attr(sub, name)
        if core in self._NUMPY_CORE and (sub, name) == ("numeric", "_frombuffer"):
            return self._frombuffer
        if module == "numpy.dtypes" and name.endswith("DType"):
            cls = getattr(np.dtypes, name, None)
            if cls is not None:
                return cls
        if module == "scipy.sparse" or module.startswith("scipy.sparse."):
            cls = _sparse_classes().get(name)
            if cls is not None:
                return cls
        if module in _COPYREG and name == "_reconstructor":
            return self._reconstructor
        if module == "_codecs" and name == "encode":
            return self._latin1_bytes
        if module in _BUILTINS and name in ("object", "dict", "bytes"):
            return {"object": _OBJECT, "dict": _DICT, "bytes": self._empty_bytes}[name]
        raise self._refuse(f"global '{module}.{name}'")

    # The wrapped callables: each admits exactly the calls numpy/scipy pickles make.

    def _reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        ok_class = isinstance(cls, type) and issubclass(cls, self._sparse)
        ok_base = base is _OBJECT or (base is _DICT and ok_class and issubclass(cls, dict))
        if not (ok_class and ok_base):
            raise self._refuse(f"copyreg._reconstructor({cls!r}, {base!r}, ...)")
        return copyreg._reconstructor(cls, base.cls, state)  # type: ignore[attr-defined]

    def _latin1_bytes(self, text: Any, encoding: Any = None) -> bytes:
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise self._refuse(f"_codecs.encode({type(text).__name__}, {encoding!r})")
        return text.encode("latin1")

    def _empty_bytes(self, *args: Any) -> bytes:
        if args:
            raise self._refuse("builtins.bytes with arguments")
        return b""

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        ok = (
            isinstance(buf, (bytes, bytearray, memoryview, pickle.PickleBuffer))
            and isinstance(dtype, np.dtype)
            and not dtype.hasobject
            and isinstance(shape, tuple)
            and all(type(n) is int for n in shape)
            and order in ("C", "F")
        )
        if not ok:
            raise self._refuse("numpy _frombuffer with unexpected arguments")
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def load_sparse_pickle(path: Path) -> sp.spmatrix:
    """Read a pickled scipy.sparse matrix with :class:`RestrictedUnpickler`.

    Its stored values must be finite and not negative (explicit zeros are dropped later).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found (the authors' format needs {AUTHOR_FILES})")
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # any failure of a corrupt pickle is the file's fault
        raise DataError(
            f"{path}: cannot read this pickle ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt - copy it again from the dataset source"
        ) from exc
    if not sp.issparse(obj) or len(obj.shape) != 2:
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, not a 2-D scipy.sparse matrix of (users, items)"
        )
    try:
        values = obj.data if obj.format in ("coo", "csr", "csc") else obj.tocoo().data
    except Exception:  # an inconsistent matrix: build_dataset says what is wrong with it
        return obj
    check_interaction_values(values, str(path), "matrix")
    return obj


def is_author_file(path: Path) -> bool:
    """Whether ``path``'s name is one of the accepted split-matrix names."""
    return any(path.match(pattern) for names in AUTHOR_NAMES.values() for pattern in names)


def is_authors_dir(directory: Path) -> bool:
    """Whether ``directory`` holds a train matrix under one of the accepted names."""
    return any(any(directory.glob(pattern)) for pattern in AUTHOR_NAMES["train"])


def author_files(directory: Path) -> list[Path]:
    """The train, valid and test matrix files of an authors' folder.

    DataError when a role has no file (naming the names looked for) or several.
    """
    out = []
    for role, patterns in AUTHOR_NAMES.items():
        found = sorted({f for pattern in patterns for f in directory.glob(pattern) if f.is_file()})
        if len(found) > 1:
            raise DataError(
                f"{directory}: several {role} matrices ({', '.join(f.name for f in found)}); "
                "keep one of them"
            )
        if not found:
            looked = ", ".join(p.replace("*", "<name>") for p in patterns[1:])
            raise DataError(
                f"{directory / patterns[0]}: file not found (also looked for {looked}); the "
                f"authors' format needs a train, a valid and a test matrix ({AUTHOR_FILES})"
            )
        out.append(found[0])
    return out


def _common_shape(files: list[Path], mats: list[sp.spmatrix], d: Path) -> tuple[int, int]:
    """The shape the matrices are padded to; DataError if one is larger than both others."""
    shapes = np.array([m.shape for m in mats])
    target = shapes.max(axis=0)
    if ((shapes == target).sum(axis=0) < 2).any():
        listed = ", ".join(f"{f.name} {m.shape}" for f, m in zip(files, mats, strict=True))
        raise DataError(
            f"{d}: the split matrices have different shapes ({listed}), one larger than "
            "both others; they must all be (users, items) - a narrower one is padded, a "
            "wider one is not"
        )
    return int(target[0]), int(target[1])


def _pad(path: Path, mat: sp.spmatrix, shape: tuple[int, int]) -> sp.spmatrix:
    if mat.shape == shape:
        return mat
    warnings.warn(
        f"{path}: shape {mat.shape} is smaller than the other split matrices' {shape}; padded "
        f"with {shape[0] - mat.shape[0]} empty row(s) and {shape[1] - mat.shape[1]} empty "
        "column(s) (those users/items have no interactions in this split)",
        stacklevel=3,
    )
    coo = mat.tocoo()
    return sp.coo_matrix((coo.data, (coo.row, coo.col)), shape=shape)


def load_authors(directory: str | Path, *, name: str | None = None) -> Dataset:
    """Load the DiffMM authors' folder: the three split pickles + ``*_feat.npy``."""
    d = Path(directory)
    files = author_files(d)
    mats = [load_sparse_pickle(f) for f in files]
    shape = _common_shape(files, mats, d)
    mats = [_pad(f, m, shape) for f, m in zip(files, mats, strict=True)]
    n_users, n_items = shape
    feats = load_feat_files(feat_files(d), n_items)
    return build_dataset(
        name or d.resolve().name, n_users, n_items, *mats, features=feats, source=str(d)
    )
