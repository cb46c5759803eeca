"""``rewrite_llm``: LaCLIP's language rewrites (Fan et al., 2023): a text-generation model in a local directory (any
HF causal LM) rewrites each caption from a few-shot ``prompt``; the rewrites go beside the original ``txt``. Never
drops.

The prompt is a template with ``{caption}``; the rewrite is what the model writes after it on the same line.
Decoding is greedy or beam search or, with ``do_sample`` (LaCLIP: temperature 0.9, top-p 0.95), sampling seeded by
``seed`` and the batch's keys. Empty or repeated rewrites are left out. A caption whose prompt leaves the model no
room to answer (its ``prompt_tokens`` score above the context less ``max_new_tokens``) gets none."""
from __future__ import annotations

from dataclasses import dataclass

from vlp.errors import ConfigError
from vlp.recipes.sample import Sample, Verdict, keep
from vlp.recipes.steps import STEPS, BatchStep
from vlp.recipes.steps.generation import (GenerationOptions, check_generation, check_model_type, device_for,
                                          distinct_texts, generation_kwargs, loading, model_directory, seeded)

# LaCLIP's in-context format, "write image captions differently," then "source => target" pairs; these pairs are
# our own, not the paper's (it drew three of its pairs at random for each caption)
LACLIP_PROMPT = """write image captions differently,

a red car parked on the street => a red automobile parked along the road

happy corgi time => a corgi dog enjoying itself

vintage leather handbag for sale, brown => a brown leather handbag in vintage style

{caption} =>"""


@dataclass
class RewriteLlmConfig(GenerationOptions):
    model: str | None = None  # a local directory with an HF text-generation model and its tokenizer
    field: str = "rewrite"  # key.json field for the rewrites
    prompt: str = LACLIP_PROMPT  # the template, with {caption}
    num_rewrites: int = 1  # per caption; more than one needs do_sample, or num_beams at least as large
    max_new_tokens: int = 77  # LaCLIP's, the CLIP text context
    temperature: float = 0.9  # LaCLIP's, with do_sample
    top_p: float = 0.95


class Rewriter:
    """An HF causal LM and its tokenizer, prompting with left padding so that every answer starts at the same
    position, right after the prompts."""

    def __init__(self, path: str, device: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        check_model_type(path, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "a text-generation one (GPT-2, Llama, ...)")
        try:
            model = AutoModelForCausalLM.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"config key 'model': {path} holds no text-generation model and tokenizer that "
                              f"transformers can load: {str(err).splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have none; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model.eval().to(device)
        self.context = getattr(model.config, "max_position_embeddings", None)  # None: no limit known

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def __call__(self, prompts: list[str], generate_options: dict) -> list[str]:
        """The answers, ``num_return_sequences`` per prompt one after the other: what the model writes on the prompt's
        last line, as LaCLIP reads it."""
        import torch

        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.no_grad():
            output = self.model.generate(**inputs, **generate_options, pad_token_id=self.tokenizer.pad_token_id)
        answers = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [answer.split("\n", 1)[0].strip() for answer in answers]


@STEPS.register("rewrite_llm")
class RewriteLlm(BatchStep):
    Config = RewriteLlmConfig

    def __init__(self, name: str, config: RewriteLlmConfig):
        super().__init__(name, config)
        self.model_path = model_directory(config.model, "an HF text-generation model (e.g. a Llama)")
        check_generation(config, "num_rewrites")
        try:
            config.prompt.format(caption="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"config key 'prompt' must be a template whose only field is {{caption}} (write "
                              f"other braces twice): {err!r}") from None
        if "{caption}" not in config.prompt:
            raise ConfigError("config key 'prompt' has no {caption}: the model would never see the caption")
        self.source = f"hf:{config.model}"
        self.rewriter: Rewriter | None = None  # loaded on first use

    def load(self) -> None:
        if self.rewriter is None:
            with loading(self.name):
                self.rewriter = Rewriter(self.model_path, device_for(self.config.device))

    def apply_batch(self, samples: list[Sample]) -> list[Verdict]:
        self.load()
        prompts = [self.config.prompt.format(caption=sample.caption) for sample in samples]
        lengths = self.rewriter.prompt_tokens(prompts)
        room = None if self.rewriter.context is None else self.rewriter.context - self.config.max_new_tokens
        fits = [index for index, length in enumerate(lengths) if room is None or length <= room]
        count = self.config.num_rewrites
        answers: list[str] = []
        if fits:
            with seeded(self.config.seed, [samples[index] for index in fits]):
                answers = self.rewriter([prompts[index] for index in fits], generation_kwargs(self.config, count))
        by_sample = {index: answers[n * count:(n + 1) * count] for n, index in enumerate(fits)}
        verdicts = []
        for index, sample in enumerate(samples):
            rewrites = distinct_texts(by_sample.get(index, []))
            if rewrites:
                sample.add_captions(self.config.field, rewrites, self.source)
            verdicts.append(keep(rewrites=len(rewrites), prompt_tokens=lengths[index]))
        return verdicts
