"""``recaption``: new captions from an image-to-text model in a local directory (BLIP, GIT, a ViT + GPT-2
VisionEncoderDecoder, ...), added beside the original ``txt`` (BLIP CapFilt, VeCLIP, DreamLIP). Never drops.

Batched through the model's processor and ``generate``. ``prompt`` starts the caption for conditional captioners and
is cut from it. Decoding is greedy or beam search or, with ``do_sample``, sampling seeded by ``seed`` and the batch's
keys. Empty or repeated captions are left out."""
from __future__ import annotations

from dataclasses import dataclass

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, keep
from vlp.recipes.steps import STEPS, BatchStep
from vlp.recipes.steps.generation import (GenerationOptions, check_generation, check_model_type, device_for,
                                          distinct_texts, generation_kwargs, loading, model_directory, seeded)


@dataclass
class RecaptionConfig(GenerationOptions):
    model: str | None = None  # a local directory with an HF image-to-text model and its processor
    field: str | None = None  # key.json field for the captions; None: the step's name
    prompt: str | None = None  # the caption's start, for conditional captioners ("a picture of"); cut from it
    num_captions: int = 1  # per image; more than one needs do_sample, or num_beams at least as large


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

    def load(self) -> None:
        if self.captioner is None:
            with loading(self.name):
                self.captioner = Captioner(self.model_path, self.config.prompt, device_for(self.config.device))

    def apply_batch(self, samples: list[Sample]) -> list[Verdict]:
        self.load()
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
