"""What a recipe step sees and what it says: a :class:`Sample` (one image-caption pair of a tar shard, every member
as read) and a :class:`Verdict` (keep or drop, why, and the scores behind the decision)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from vlp.config import DataConfig

MAX_PIXELS = DataConfig().max_pixels  # an image training would skip as too large is not kept either


@dataclass(frozen=True)
class Verdict:
    """A step's decision on one sample. ``reason`` is a short snake_case name, counted in the report; ``scores``
    are the numbers the decision was made from, written to the kept sample's ``key.json`` under
    ``scores.<step name>`` so that a user can re-threshold without running the step again."""

    keep: bool
    reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.keep and not self.reason:
            raise ValueError("a dropping verdict needs a reason")


def keep(**scores: float) -> Verdict:
    return Verdict(True, None, scores)


def drop(reason: str, **scores: float) -> Verdict:
    return Verdict(False, reason, scores)


def _number(value) -> int | float:
    """Scores as JSON numbers: ints stay ints, anything else (numpy scalars included) becomes a float."""
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


@dataclass
class Sample:
    """One sample of a shard. ``members`` holds every tar member by extension, as read (the image, ``txt``, ``json``
    and any other, such as ``cls``); they are written back unchanged except ``json``, which is ``self.json``.

    Steps read ``key``, ``image_bytes``/``image_ext``, ``txt`` (the original caption), ``caption`` (the same,
    whitespace-normalized), ``image`` (decoded on first use), ``image_size``, ``json`` and ``inputs`` (what the
    workers prepared for the step, see ``vlp.recipes.steps``); they change a sample only through ``add_captions``
    and ``json``. The original ``txt`` is never changed."""

    key: str | None  # None for a lost shard remainder (a truncated or unreadable shard), counted as one sample
    members: dict[str, bytes] = field(default_factory=dict)
    image_ext: str | None = None
    json: dict = field(default_factory=dict)
    problem: str | None = None  # why the reader could not take the sample, e.g. "malformed_json"
    dropped_by: tuple[str, str] | None = None  # (step name, reason) once a step drops it
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # this stage's scores, by step name
    inputs: dict[str, object] = field(default_factory=dict, repr=False)  # Step.prepare's results, by step name
    # the JPEG draft size the stage's first image-reading step decodes at: the read check decodes at it too, so
    # that the image is decoded once
    decode_size: int | None = None
    _decoded: tuple = field(default=(None, None), repr=False)  # (draft size, RGB image) of the last decode
    _size: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def image_bytes(self) -> bytes | None:
        return self.members.get(self.image_ext) if self.image_ext else None

    @property
    def txt(self) -> str:
        """The original caption. The read check has already dropped samples whose ``txt`` is missing, empty or
        not UTF-8, so steps can take it as it comes."""
        return self.members["txt"].decode("utf-8")

    @property
    def caption(self) -> str:
        return " ".join(self.txt.split())

    @property
    def image(self):
        """The RGB PIL image at full size, decoded once; raises ``vlp.data.BadSample`` (the step's verdict becomes a
        drop under that reason, e.g. ``corrupt_image``) when the bytes cannot be decoded."""
        return self.decoded(None)

    def decoded(self, draft_size: int | None):
        """The RGB PIL image, a JPEG decoded at reduced scale while both sides stay at least ``draft_size`` (None:
        full size), as vlp.data decodes for a model of that input size. The last decode is kept, so steps asking
        for the same size share it."""
        if self._decoded[1] is None or self._decoded[0] != draft_size:
            from vlp.data.decode import decode_image  # vlp.data imports torch; a bad recipe should fail before it

            image = decode_image(self.image_bytes, MAX_PIXELS, draft_size)
            self._decoded = (draft_size, image)
            if draft_size is None:
                self._size = image.size
        return self._decoded[1]

    def forget_image(self) -> None:
        """Let the decoded image go (it is decoded again if asked for)."""
        self._decoded = (None, None)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the stored image, read from its header: no pixels are decoded."""
        if self._size is None:
            from vlp.data.decode import header_size

            self._size = header_size(self.image_bytes)
        return self._size

    def add_captions(self, field_name: str, texts: list[str], source: str) -> None:
        """Append synthetic captions to ``json[field_name]`` (a list) and record where they came from in
        ``json["caption_sources"][field_name]``; training reads them with ``caption_fields: [txt, json.NAME]``."""
        existing = self.json.get(field_name)
        earlier = [existing] if isinstance(existing, str) else list(existing or [])
        self.json[field_name] = earlier + list(texts)
        self.json.setdefault("caption_sources", {})[field_name] = source

    @property
    def dropped(self) -> bool:
        return self.dropped_by is not None

    def judge(self, step: str, verdict: Verdict) -> None:
        """Record ``step``'s verdict: its scores (kept samples carry them in ``json``), and the drop if it is one."""
        if verdict.scores:
            scores = {name: _number(value) for name, value in verdict.scores.items()}
            self.scores[step] = scores
            self.json.setdefault("scores", {})[step] = scores
        if not verdict.keep:
            self.dropped_by = (step, verdict.reason)
            # a dropped sample's bytes need not travel between processes
            self.members, self.inputs, self._decoded = {}, {}, (None, None)

    def outcome(self) -> dict:
        """What steps may change (``json``, the verdicts, ``inputs``): all a worker sends back, the main process
        holding the sample's bytes already."""
        return {"json": self.json, "scores": self.scores, "dropped_by": self.dropped_by, "inputs": self.inputs}

    def take(self, outcome: dict) -> None:
        """Take a worker's ``outcome`` of this sample."""
        self.__dict__.update(outcome)
        if self.dropped:
            self.members = {}

    def record(self) -> dict:
        """The line of the decisions file for this sample."""
        step, reason = self.dropped_by or (None, None)
        return {"key": self.key, "kept": not self.dropped, "step": step, "reason": reason, "scores": self.scores}

    def output_members(self) -> dict[str, bytes]:
        """The members to write: as read, with ``json`` replaced by the (possibly extended) document."""
        members = dict(self.members)
        if self.json or "json" in members:
            members["json"] = json.dumps(self.json, ensure_ascii=False).encode()
        return members

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_decoded": (None, None)}  # the decoded image is re-made on demand, not pickled
