"""Class labels that travel with an artifact (`--labels FILE`), read in one place.

Three forms are read: one name a line (blank lines at the end ignored), a JSON list of names, or a JSON object
mapping the class index to a name, as ImageNet's class index files do (`{"0": ["n01440764", "tench"], ...}`: a
list value gives its last entry, the readable name). The indices must run 0..N-1 without a gap or a duplicate, so
that line i is class i. Pure Python: the job resolver checks a labels file before anything imports torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from effexport.errors import UsageError

IMAGENET_CLASSES = 1000
IMAGENET_SOURCE = "imagenet"  # timm's ImageNet-1k class descriptions, the default for a 1000-class head


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]
    source: str  # the file given, or IMAGENET_SOURCE

    def __len__(self) -> int:
        return len(self.names)

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    def record(self) -> dict:
        """What the report and the manifest say of them."""
        return {"source": self.source, "count": len(self.names), "sha256": self.digest(), "names": list(self.names)}

    def text(self) -> str:
        """labels.txt as Triton's classification extension reads it: line i names class i."""
        return "".join(f"{name}\n" for name in self.names)


def read_labels(path: Path, option: str = "--labels") -> Labels:
    """Read and check a labels file; UsageError in one line when it is unreadable, empty or not contiguous."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option} {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path} cannot be read as UTF-8 text ({exc})") from None
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise UsageError(f"{option} {path} starts like JSON but does not parse: {exc}") from None
        names = _from_json(data, path, option)
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        blank = [i for i, name in enumerate(names) if not name]
        if blank:
            raise UsageError(f"{option} {path}: line {blank[0] + 1} is blank; every class needs a name (one a line)")
    if not names:
        raise UsageError(f"{option} {path} holds no labels: give one name a line, a JSON list, or a JSON object "
                         f"index -> name")
    return Labels(tuple(names), str(path))


def _from_json(data: object, path: Path, option: str) -> list[str]:
    if isinstance(data, list):
        return [_name(value, str(i), path, option) for i, value in enumerate(data)]
    if not isinstance(data, dict):
        raise UsageError(f"{option} {path}: JSON labels must be a list or an object index -> name")
    indexed: dict[int, str] = {}
    for key, value in data.items():
        try:
            index = int(key)
        except ValueError:
            raise UsageError(f"{option} {path}: key {key!r} is not a class index") from None
        if index in indexed:
            raise UsageError(f"{option} {path}: class index {index} appears twice")
        indexed[index] = _name(value, key, path, option)
    missing = sorted(set(range(len(indexed))) - set(indexed))
    if missing:
        raise UsageError(f"{option} {path}: class indices must run 0..{len(indexed) - 1} without gaps; "
                         f"{missing[0]} is missing (largest given: {max(indexed)})")
    return [indexed[i] for i in range(len(indexed))]


def _name(value: object, key: str, path: Path, option: str) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = value[-1]  # ImageNet's index files: [wordnet id, name]
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{option} {path}: the label of class {key} is {value!r}, not a non-empty name")
    if "\n" in value.strip() or "\r" in value.strip():
        raise UsageError(f"{option} {path}: the label of class {key} spans lines; labels.txt holds one name a line")
    return value.strip()


def imagenet_labels() -> Labels:
    """ImageNet-1k's class descriptions as timm ships them (class i is line i)."""
    from timm.data import ImageNetInfo

    return Labels(tuple(ImageNetInfo().label_descriptions()), IMAGENET_SOURCE)


def check_count(labels: Labels, num_classes: int, what: str) -> None:
    if len(labels) != num_classes:
        raise UsageError(f"{labels.source} names {len(labels)} classes but {what} has {num_classes}: give one label "
                         f"per class")
