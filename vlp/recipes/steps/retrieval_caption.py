"""``retrieval_caption``: captions retrieved rather than generated: a vlp model picks, for each image, the ``top_k``
captions of a caption ``bank`` closest to it, and adds them beside the original ``txt``. Never drops.

``model`` is what the other model steps take (see ``embedding.py``): a vlp run or checkpoint, or ``local-dir:DIR``
for an exported OpenCLIP directory. ``bank`` is a text file, one caption per line, blank and repeated lines left
out; it is embedded once, on first use, and searched exactly (faiss inner product). A bank caption equal to the
sample's own is passed over: a bank made from the dataset's captions would otherwise give each image its own caption
back. Scores: the cosine similarity of the best caption and, with ``top_k`` above 1, of the last one added."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, keep
from vlp.recipes.steps import STEPS, BatchStep
from vlp.recipes.steps.embedding import Encoder, ModelOptions, check_model_options, load_encoder
from vlp.recipes.steps.generation import loading


@dataclass
class RetrievalCaptionConfig(ModelOptions):
    bank: str | None = None  # a text file of candidate captions, one per line
    top_k: int = 1  # captions added per image
    field: str = "retrieved"  # key.json field for the captions


def read_bank(path: str | None) -> list[str]:
    """The bank's captions, whitespace-normalized, without blank lines or repeats, in file order."""
    if path is None:
        raise ConfigError("config key 'bank' is not set: give a text file with one caption per line")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config key 'bank': cannot read {path}: {err}") from None
    captions = list(dict.fromkeys(caption for caption in (" ".join(line.split()) for line in lines) if caption))
    if not captions:
        raise ConfigError(f"config key 'bank': {path} holds no captions")
    return captions


@STEPS.register("retrieval_caption")
class RetrievalCaption(BatchStep):
    Config = RetrievalCaptionConfig
    prepares = True  # the workers decode and preprocess its images

    def __init__(self, name: str, config: RetrievalCaptionConfig):
        super().__init__(name, config)
        check_model_options(config)
        self.bank = read_bank(config.bank)
        if not 1 <= config.top_k <= len(self.bank):
            raise ConfigError(f"config key 'top_k' must be in [1, {len(self.bank)}] (the bank's captions), got "
                              f"{config.top_k}")
        self.source = f"retrieval:{config.model} bank:{config.bank}"
        self.encoder: Encoder | None = None  # loaded on first use
        self.index = None  # the bank's embeddings in a faiss inner-product index, made on first use

    def load(self) -> None:
        import faiss
        import numpy as np

        if self.encoder is not None:
            return
        with loading(self.name):
            self.encoder = load_encoder(self.config)
        size = self.config.batch_size
        embeddings = np.concatenate([self.encoder.texts(self.bank[start:start + size])
                                     for start in range(0, len(self.bank), size)])
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(embeddings)

    @property
    def decode_size(self) -> int | None:
        self.load()
        return self.encoder.draft_size

    def prepare(self, sample: Sample):
        return self.encoder.prepare(sample)

    def apply_batch(self, samples: list[Sample]) -> list[Verdict]:
        self.load()
        # one more than needed: the sample's own caption, if the bank has it, is passed over
        similarities, indices = self.index.search(self.encoder.images(samples, self.name),
                                                  min(self.config.top_k + 1, len(self.bank)))
        verdicts = []
        for sample, values, found in zip(samples, similarities.tolist(), indices.tolist()):
            chosen = [(value, self.bank[i]) for value, i in zip(values, found) if self.bank[i] != sample.caption]
            verdicts.append(self.add(sample, chosen[:self.config.top_k]))
        return verdicts

    def add(self, sample: Sample, chosen: list[tuple[float, str]]) -> Verdict:
        if not chosen:  # a one-caption bank holding the sample's own caption
            return keep()
        sample.add_captions(self.config.field, [caption for _, caption in chosen], self.source)
        scores = {"similarity": chosen[0][0]}
        if self.config.top_k > 1:
            scores["last_similarity"] = chosen[-1][0]
        return keep(**scores)
