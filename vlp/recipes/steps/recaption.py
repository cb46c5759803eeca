"""``recaption``: new captions from an image-to-text model in a local directory (BLIP, GIT, a ViT + GPT-2
VisionEncoderDecoder, ...), added beside the original ``txt`` (BLIP CapFilt, VeCLIP, DreamLIP). Never drops.

Batched through the model's processor and ``generate``. ``prompt`` starts the caption for conditional captioners and
is cut from it. Decoding is greedy or beam search or, with ``do_sample``, sampling seeded by ``seed`` and the batch's
keys. Empty or repeated captions are left out. The generation helpers here are shared with ``rewrite_llm``."""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, keep
from vlp.recipes.steps import STEPS, BatchStep


@dataclass
class RecaptionConfig:
    model: str | None = None  # a local directory with an HF image-to-text model and its processor
    field: str | None = None  # key.json field for the captions; None: the step's name
    prompt: str | None = None  # the caption's start, for conditional captioners ("a picture of"); cut from it
    num_captions: int = 1  # per image; more than one needs do_sample, or num_beams at least as large
    max_new_tokens: int = 30
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0  # with do_sample
    top_p: float = 0.9  # with do_sample
    seed: int = 0
    batch_size: int = 16
    device: str | None = None  # e.g. cuda:1; None: cuda when there is one, else cpu


def model_directory(path: str | None, kind: str) -> str:
    """``path`` checked to be a local directory (nothing is downloaded)."""
    if path is None:
        raise ConfigError(f"config key 'model' is not set: give a local directory holding {kind}")
    if not Path(path).is_dir():
        raise ConfigError(f"config key 'model': no such directory: {path}")
    return path


def check_generation(config, count_key: str) -> None:
    """Reject generation options ``generate`` would refuse or ignore, naming the key."""
    count = getattr(config, count_key)
    for key in ("max_new_tokens", "num_beams", count_key):
        if getattr(config, key) < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(config, key)}")
    if config.temperature <= 0 or not 0 < config.top_p <= 1:
        raise ConfigError(f"config keys 'temperature' (> 0) and 'top_p' (in (0, 1]) got {config.temperature} and "
                          f"{config.top_p}")
    if count > config.num_beams and not config.do_sample:
        raise ConfigError(f"config key '{count_key}' is {count}: more than one output per input needs "
                          f"do_sample: true, or num_beams: {count} or more")


def generation_kwargs(config, count: int) -> dict:
    kwargs = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams, "do_sample": config.do_sample,
              "num_return_sequences": count}
    if config.do_sample:  # set only when used: generate warns about sampling options it ignores
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    return kwargs


@contextlib.contextmanager
def seeded(seed: int, samples: list[Sample]):
    """Torch's random state seeded from ``seed`` and the batch's keys, restored afterwards: a batch samples the same
    outputs in every run and process (the batches themselves are the same in every run)."""
    import torch

    digest = hashlib.sha256("\n".join([str(seed), *(sample.key for sample in samples)]).encode()).digest()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(int.from_bytes(digest[:8], "little"))
        yield


@contextlib.contextmanager
def loading(step_name: str):
    """A model that cannot be loaded is found on first use, during the run: its error names the step, as the errors
    found when the recipe is loaded do."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"recipe step '{step_name}': {err}") from None


def check_model_type(path: str, known_types, kind: str) -> None:
    """Fail, naming the key, unless ``path`` holds a model type transformers loads as ``kind``. Checked by name
    before loading: transformers' own error lists every model type it knows, on one line."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"config key 'model': {path} holds no model transformers can load: "
                          f"{str(err).splitlines()[0]}") from None
    if model_type not in known_types:
        raise ConfigError(f"config key 'model': {path} holds a '{model_type}' model, not {kind}")


def device_for(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def distinct_texts(texts: list[str]) -> list[str]:
    """Whitespace-normalized, empty ones and repeats left out, in order."""
    return list(dict.fromkeys(text for text in (" ".join(t.split()) for t in texts) if text))


class Captioner:
    """An HF image-to-text model with its processor and tokenizer. A multimodal processor (BLIP's, GIT's) takes images
    and text; a model with only an image processor (VisionEncoderDecoder) takes images, and its tokenizer decodes."""

    def __init__(self, path: str, prompt: str | None, device: str):
        from transformers import (AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
                                  ProcessorMixin)
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        check_model_type(path, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "an image-to-text one (BLIP, GIT, ...)")
        try:
            model = AutoModelForImageTextToText.from_pretrained(path)
            processor = AutoProcessor.from_pretrained(path)
            if not isinstance(processor, ProcessorMixin):
                processor = AutoImageProcessor.from_pretrained(path)
            self.tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"config key 'model': {path} holds no image-to-text model and processor that "
                              f"transformers can load: {str(err).splitlines()[0]}") from None
        if prompt is not None and not isinstance(processor, ProcessorMixin):
            raise ConfigError(f"config key 'prompt': the model in {path} takes no text, only images")
        self.model = model.eval().to(device)
        self.processor, self.prompt = processor, prompt
        # decoder-only captioners return the prompt too, written as the tokenizer writes it (BLIP's lowercases)
        ids = self.tokenizer(prompt or "", add_special_tokens=False)["input_ids"]
        self.decoded_prompt = self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def __call__(self, images: list, generate_options: dict) -> list[str]:
        """The generated texts, ``num_return_sequences`` per image one after the other, the prompt cut off."""
        import torch

        text = {} if self.prompt is None else {"text": [self.prompt] * len(images), "padding": True}
        inputs = self.processor(images=images, return_tensors="pt", **text).to(self.model.device)
        with torch.no_grad():
            output = self.model.generate(**inputs, **generate_options)
        return [self.without_prompt(text) for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]

    def without_prompt(self, text: str) -> str:
        text = text.strip()
        return text[len(self.decoded_prompt):] if text.startswith(self.decoded_prompt) else text


@STEPS.register("recaption")
class Recaption(BatchStep):
    Config = RecaptionConfig

    def __init__(self, name: str, config: RecaptionConfig):
        super().__init__(name, config)
        self.model_path = model_directory(config.model, "an HF image-to-text model (BLIP, GIT, ...)")
        check_generation(config, "num_captions")
        self.field = config.field or name
        self.source = f"hf:{config.model}"
        self.captioner: Captioner | None = None  # loaded on first use

    def apply_batch(self, samples: list[Sample]) -> list[Verdict]:
        if self.captioner is None:
            with loading(self.name):
                self.captioner = Captioner(self.model_path, self.config.prompt, device_for(self.config.device))
        count = self.config.num_captions
        with seeded(self.config.seed, samples):
            texts = self.captioner([sample.image for sample in samples], generation_kwargs(self.config, count))
        verdicts = []
        for index, sample in enumerate(samples):
            captions = distinct_texts(texts[index * count:(index + 1) * count])
            if captions:
                sample.add_captions(self.field, captions, self.source)
            verdicts.append(keep(captions=len(captions)))
        return verdicts
