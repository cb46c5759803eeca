"""Zero-shot classifiers built from class names × prompt templates.

Prompt ensembling (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", sec. 3.1.4): each class is embedded under every template, and the class weight is the
L2-normalized mean of the L2-normalized template embeddings, as OpenCLIP's
``open_clip.zero_shot_classifier.build_zero_shot_classifier`` computes it.

AutoCLIP (Metzen et al. 2023, "AutoCLIP: Auto-tuning Zero-Shot Classifiers for Vision-Language Models")
replaces the uniform mean by per-image template weights: templates whose embeddings lie closer to the image
(averaged over the classes) weigh more.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Template = str | Callable[[str], str]
# names of open_clip.zero_shot_metadata's sets: OpenAI's 80 ImageNet prompts, and OpenCLIP's short set
TEMPLATE_SETS = {"openai_imagenet": "OPENAI_IMAGENET_TEMPLATES", "simple": "SIMPLE_IMAGENET_TEMPLATES"}
DEFAULT_TEMPLATES = "openai_imagenet"
CLASSES_PER_BATCH = 10  # OpenCLIP's default: bounds the text batch at 10 × the number of templates


def template_set(name: str) -> tuple[Template, ...]:
    """A named template set from ``open_clip.zero_shot_metadata``."""
    # imported on use: open_clip's package import costs about a second, which ``import vlp.api`` need not pay
    from open_clip import zero_shot_metadata

    return tuple(getattr(zero_shot_metadata, TEMPLATE_SETS[name]))


def resolve_templates(templates: str | Template | Sequence[Template] | None) -> tuple[Template, ...]:
    """A template set name, one template, or a sequence of ``str.format`` strings with ``{}`` or callables."""
    if templates is None:
        templates = DEFAULT_TEMPLATES
    if isinstance(templates, str) and templates in TEMPLATE_SETS:
        return template_set(templates)
    if isinstance(templates, str) or callable(templates):
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for template in templates:
        if isinstance(template, str) and "{}" not in template:
            raise ValueError(f"prompt template {template!r} has no '{{}}' for the class name "
                             f"(or name a template set: {', '.join(TEMPLATE_SETS)})")
        if not isinstance(template, str) and not callable(template):
            raise TypeError(f"a prompt template is a string with '{{}}' or a callable, not {type(template).__name__}")
    return templates


def format_prompt(template: Template, label: str) -> str:
    return template.format(label) if isinstance(template, str) else template(label)


@torch.no_grad()
def embed_prompts(encode_texts: Callable[[list[str]], torch.Tensor], labels: Sequence[str],
                  templates: Sequence[Template], classes_per_batch: int | None = CLASSES_PER_BATCH) -> torch.Tensor:
    """Normalized embeddings of every (label, template) prompt, [num_classes, num_templates, D].

    ``encode_texts`` maps strings to embeddings; batching by classes keeps OpenCLIP's text batches, so the
    numbers match its classifier to float tolerance.
    """
    step = classes_per_batch or len(labels)
    chunks = []
    for start in range(0, len(labels), step):
        batch = labels[start:start + step]
        prompts = [format_prompt(template, label) for label in batch for template in templates]
        chunks.append(F.normalize(encode_texts(prompts).float(), dim=-1).reshape(len(batch), len(templates), -1))
    return torch.cat(chunks)


def ensemble(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """CLIP prompt ensembling: [C, T, D] -> class weights [C, D], the normalized mean over templates."""
    return F.normalize(prompt_embeddings.mean(dim=1), dim=-1)


def autoclip_template_weights(image_features: torch.Tensor, prompt_embeddings: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """AutoCLIP (Metzen et al. 2023): per-image template weights [N, T].

    weights = softmax over templates of ``temperature`` × (image · prompt embedding, averaged over classes).
    The paper tunes the temperature per image to a target entropy; a fixed one (the model's logit scale by
    default, which makes the template scores as sharp as the class logits) keeps it simple and deterministic.
    """
    similarity = torch.einsum("nd,ctd->nt", image_features, prompt_embeddings) / prompt_embeddings.shape[0]
    return (temperature * similarity).softmax(dim=-1)


@dataclass(frozen=True)
class ZeroShotClassifier:
    """Class weights for ``labels`` from ``prompt_embeddings`` [C, T, D] of every label × template."""

    labels: tuple[str, ...]
    prompt_embeddings: torch.Tensor

    @property
    def weights(self) -> torch.Tensor:
        """Prompt-ensembled class weights [C, D]."""
        return ensemble(self.prompt_embeddings)

    def logits(self, image_features: torch.Tensor, scale: float, autoclip: bool = False,
               autoclip_temperature: float | None = None) -> torch.Tensor:
        """``scale`` × cosine similarity of each normalized image feature to each class weight, [N, C].

        With ``autoclip`` each image gets its own class weights, the AutoCLIP-weighted template mean.
        """
        if not autoclip:
            return scale * image_features @ self.weights.T
        temperature = scale if autoclip_temperature is None else autoclip_temperature
        template_weights = autoclip_template_weights(image_features, self.prompt_embeddings, temperature)
        per_image = F.normalize(torch.einsum("nt,ctd->ncd", template_weights, self.prompt_embeddings), dim=-1)
        return scale * torch.einsum("nd,ncd->nc", image_features, per_image)


def build_classifier(encode_texts: Callable[[list[str]], torch.Tensor], labels: Sequence[str],
                     templates: str | Template | Sequence[Template] | None = None,
                     classes_per_batch: int | None = CLASSES_PER_BATCH) -> ZeroShotClassifier:
    """Embed every label under every template (see ``embed_prompts``) into a ``ZeroShotClassifier``."""
    labels = tuple(labels)
    if not labels:
        raise ValueError("at least one label is needed")
    templates = resolve_templates(templates)
    return ZeroShotClassifier(labels, embed_prompts(encode_texts, labels, templates, classes_per_batch))


class ClassifierCache:
    """LRU of classifiers keyed by (labels, templates): classifying many images against the same labels
    encodes the prompts once."""

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, ZeroShotClassifier] = OrderedDict()

    def get(self, encode_texts: Callable[[list[str]], torch.Tensor], labels: Sequence[str],
            templates: str | Template | Sequence[Template] | None = None) -> ZeroShotClassifier:
        # resolved templates are the key, so a set's name and its spelled-out list share one entry
        key = (tuple(labels), resolve_templates(templates))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        classifier = build_classifier(encode_texts, key[0], key[1])
        self._entries[key] = classifier
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return classifier

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
