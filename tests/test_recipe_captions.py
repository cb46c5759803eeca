"""The caption and near-duplicate recipe steps: ``phash_dedup`` against imagehash and a brute-force reference,
``recaption`` and ``rewrite_llm`` against direct ``generate`` calls on tiny random models built here (nothing is
downloaded), ``retrieval_caption`` against a brute-force search with ``vlp.load``'s embeddings, and the LaCLIP recipe
run end to end through ``vlp recipe run``."""
from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from datagen import write_shard
from vlp.cli import main
from vlp.data import iter_in_order, load_default, open_sources
from vlp.data.pipeline import caption_candidates
from vlp.errors import ConfigError
from vlp.recipes import load_recipe
from vlp.recipes.shards import as_sample, read_samples
from vlp.recipes.steps.embedding import Encoder
from vlp.recipes.steps.phash_dedup import PhashDedup, PhashDedupConfig
from vlp.recipes.steps.recaption import Recaption, RecaptionConfig
from vlp.recipes.steps.retrieval_caption import RetrievalCaption, RetrievalCaptionConfig
from vlp.recipes.steps.rewrite_llm import RewriteLlm, RewriteLlmConfig

REPO = Path(__file__).resolve().parents[1]
FASHION = load_default("val")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: more threads only contend, on a machine whose few cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fashion(index: int, size=(96, 96), fmt="JPEG", **options) -> bytes:
    return encode_with(FASHION.pil(index).convert("RGB").resize(size), fmt, **options)


def encode_with(image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def sample(key: str, image: bytes, caption: str):
    """A sample as the engine reads it from a shard."""
    return as_sample(key, {"jpg": image, "txt": caption.encode(), "json": b'{"source": "test"}'})


def fashion_samples(indices) -> list:
    return [sample(f"fm{i:04d}", fashion(i), FASHION.captions[i]) for i in indices]


# ---------------------------------------------------------------------------------------------------- phash_dedup


def decide(step: PhashDedup, samples: list) -> list:
    signatures = np.concatenate([step.signatures(samples[:3]), step.signatures(samples[3:])])  # batches joined
    return step.decide([(0, s.key) for s in samples], signatures)


def test_phash_keeps_the_first_of_resized_and_reencoded_copies_with_imagehash_distances():
    originals = fashion_samples(range(8))
    hashes = [imagehash.phash(s.image) for s in originals]
    assert min(a - b for a, b in itertools.combinations(hashes, 2)) > 4  # the originals are different pictures
    small = sample("small_png_copy", encode_with(originals[3].image.resize((64, 64)), "PNG"), "a smaller copy")
    low_quality = sample("low_quality_copy", fashion(0, quality=10), "a blurrier copy")
    samples = [*originals[:3], small, *originals[3:], low_quality]  # the small copy comes before its original
    step = PhashDedup("phash_dedup", PhashDedupConfig(fast_decode=False))
    verdicts = decide(step, samples)
    dropped = {s.key: v for s, v in zip(samples, verdicts) if not v.keep}
    assert sorted(dropped) == ["fm0003", "low_quality_copy"] and {v.reason for v in dropped.values()} == {
        "near_duplicate"}
    for copy, original in ((originals[3], small), (low_quality, originals[0])):
        distance = imagehash.phash(copy.image) - imagehash.phash(original.image)
        assert dropped[copy.key].scores == {"distance": distance} and 0 < distance <= 4
    assert step.summary(None, None, verdicts) == {"kept_images_with_near_duplicates": 2, "largest_group": 2}
    fast = PhashDedup("phash_dedup", PhashDedupConfig())  # JPEGs decoded at half size here
    differences = np.unpackbits(fast.signatures(samples) ^ step.signatures(samples), axis=1).sum(axis=1)
    assert differences.max() <= 2 and [v.keep for v in decide(fast, samples)] == [v.keep for v in verdicts]
    tight = PhashDedup("phash_dedup", PhashDedupConfig(hash_size=16, max_distance=0, fast_decode=False))
    assert all(v.keep for v in decide(tight, samples))  # the copies are a few bits off at 256 bits
    with pytest.raises(ConfigError, match=r"'max_distance' must be in \[0, 63\]"):
        PhashDedup("phash_dedup", PhashDedupConfig(max_distance=64))


def brute_force(codes: np.ndarray, max_distance: int) -> list[tuple[bool, int | None]]:
    """Keep an image unless an earlier kept one is within ``max_distance``; (kept, distance to the nearest)."""
    bits = np.unpackbits(codes, axis=1).astype(int)
    kept, result = [], []
    for i in range(len(codes)):
        near = [int((bits[i] != bits[j]).sum()) for j in kept]
        near = [d for d in near if d <= max_distance]
        result.append((not near, min(near) if near else None))
        if not near:
            kept.append(i)
    return result


@pytest.mark.parametrize("hash_size, max_distance", [(8, 0), (8, 4), (8, 10), (4, 3), (6, 5), (3, 5)])
def test_phash_multi_hash_search_equals_brute_force(hash_size, max_distance):
    rng = np.random.default_rng(hash_size * 100 + max_distance)
    bits = hash_size * hash_size
    centres = rng.integers(0, 2, (25, bits))
    rows = []
    for _ in range(400):  # copies of a few centres, some within range, some just beyond, some chained
        row = centres[rng.integers(len(centres))].copy()
        flips = rng.choice(bits, rng.integers(0, min(bits, 2 * max_distance + 2)), replace=False)
        row[flips] ^= 1
        rows.append(row)
    codes = np.packbits(np.array(rows, dtype=np.uint8), axis=1)
    step = PhashDedup("phash_dedup", PhashDedupConfig(hash_size=hash_size, max_distance=max_distance))
    verdicts = step.decide([(0, str(i)) for i in range(len(codes))], codes)
    expected = brute_force(codes, max_distance)
    assert [(v.keep, v.scores.get("distance")) for v in verdicts] == expected
    assert 0 < sum(not keep for keep, _ in expected) < len(codes) - 1


# ------------------------------------------------------------------------------------ tiny models, built offline


def byte_level_tokenizer(path, corpus: list[str]):
    """A GPT-2-style byte-level BPE trained here on ``corpus``, saved to ``path``."""
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    return tokenizer


def gpt2_config(vocab_size: int, positions: int = 512):
    from transformers import GPT2Config

    # a large initializer_range: a random model that says different things for different inputs
    return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=positions,
                      initializer_range=0.5, bos_token_id=0, eos_token_id=0)


def save_tiny_blip(path, words: list[str]) -> None:
    """A random BLIP captioner with a word-level BERT tokenizer of ``words``, saved to ``path``."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(path)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 initializer_range=0.5)
    config = BlipConfig(vision_config=dict(**small, image_size=32, patch_size=8), initializer_range=0.5,
                        text_config=dict(**small, vocab_size=len(vocab), encoder_hidden_size=32,
                                         max_position_embeddings=64, bos_token_id=5, pad_token_id=0,
                                         sep_token_id=3, eos_token_id=3))
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(path)


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> str:
    """A random BLIP captioner with a word-level BERT tokenizer of the Fashion-MNIST captions' words."""
    path = tmp_path_factory.mktemp("blip")
    words = {w for c in FASHION.captions for w in c.replace(".", " .").replace(",", " ,").split()}
    save_tiny_blip(path, sorted(words))
    return str(path)


@pytest.fixture(scope="module")
def vit_gpt2(tmp_path_factory) -> str:
    """A random VisionEncoderDecoder (ViT + GPT-2): an image processor and a tokenizer, no multimodal processor."""
    from transformers import ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    path = tmp_path_factory.mktemp("vit_gpt2")
    tokenizer = byte_level_tokenizer(path, FASHION.captions[:200])
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    encoder = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        image_size=32, patch_size=8, initializer_range=0.5)
    decoder = gpt2_config(len(tokenizer), positions=64)
    decoder.add_cross_attention = True
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 0
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> str:
    """A random GPT-2 with a byte-level BPE trained on the captions and rewrite_llm's prompt."""
    from transformers import GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    tokenizer = byte_level_tokenizer(path, [*FASHION.captions[:200], RewriteLlmConfig().prompt])
    torch.manual_seed(0)
    GPT2LMHeadModel(gpt2_config(len(tokenizer))).save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------------------------------ recaption


def direct_captions(path: str, samples: list, prompt: str | None, max_new_tokens: int) -> list[str]:
    """What the model says when asked directly, one image at a time, on the CPU."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    if prompt is None:
        processor, tokenizer = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        inputs = [processor(images=[s.image], return_tensors="pt") for s in samples]
    else:
        processor = AutoProcessor.from_pretrained(path)
        tokenizer = processor.tokenizer
        inputs = [processor(images=[s.image], text=[prompt], return_tensors="pt") for s in samples]
    with torch.no_grad():
        outputs = [model.generate(**one, max_new_tokens=max_new_tokens, do_sample=False)[0] for one in inputs]
    return [" ".join(tokenizer.decode(output, skip_special_tokens=True).split()) for output in outputs]


def recaption(config: RecaptionConfig, samples: list, name: str = "recaption") -> list:
    step = Recaption(name, config)
    return step.apply_batch(samples)


@pytest.mark.parametrize("captioner, prompt", [("blip", "a photo of"), ("blip", None), ("vit_gpt2", None)])
def test_recaption_equals_direct_generate_and_keeps_the_original(request, captioner, prompt):
    path = request.getfixturevalue(captioner)
    samples = fashion_samples(range(6))
    config = RecaptionConfig(model=path, prompt=prompt, max_new_tokens=8, batch_size=6, device="cpu")  # as below
    verdicts = recaption(config, samples)
    captions = [s.json.get("recaption", []) for s in samples]
    expected = direct_captions(path, samples, prompt, 8)
    if prompt is not None:  # the model repeats the prompt, the step cuts it
        assert all(text.startswith(prompt + " ") for text in expected)
        expected = [text[len(prompt):].strip() for text in expected]
    assert captions == [[text] if text else [] for text in expected] and len(set(expected)) > 2
    assert [v.scores for v in verdicts] == [{"captions": len(c)} for c in captions] and all(v.keep for v in verdicts)
    for index, s in zip(range(6), samples):
        document = json.loads(s.output_members()["json"])  # what key.json gets
        assert document["recaption"] == s.json["recaption"] and document["source"] == "test"
        assert document["caption_sources"] == {"recaption": f"hf:{path}"}
        assert s.txt == FASHION.captions[index]


def test_recaption_sampling_is_seeded_and_deterministic(blip):
    def sampled(seed: int) -> list[list[str]]:
        samples = fashion_samples(range(4))
        config = RecaptionConfig(model=blip, field="sampled", num_captions=3, do_sample=True, seed=seed,
                                 max_new_tokens=8)
        verdicts = recaption(config, samples, name="blip_sampled")
        assert all(v.scores["captions"] == len(s.json["sampled"]) for v, s in zip(verdicts, samples))
        return [s.json["sampled"] for s in samples]

    first = sampled(0)
    assert first == sampled(0) and first != sampled(1)
    assert all(len(texts) == len(set(texts)) <= 3 for texts in first)
    assert sum(len(texts) for texts in first) > 4  # sampling gives different captions of one image


def test_model_steps_name_an_unusable_model_or_option(blip, vit_gpt2, gpt2):
    with pytest.raises(ConfigError, match="'num_captions' is 3: more than one output per input needs do_sample"):
        Recaption("recaption", RecaptionConfig(model=blip, num_captions=3))
    with pytest.raises(ConfigError, match="^config key 'model': no such directory"):
        Recaption("recaption", RecaptionConfig(model=blip + "-missing"))
    with pytest.raises(ConfigError, match="^recipe step 'recaption': config key 'prompt': the model in .* no text"):
        recaption(RecaptionConfig(model=vit_gpt2, prompt="a photo of"), fashion_samples([0]))
    with pytest.raises(ConfigError, match=r"^recipe step 'blip': config key 'model': \S+ holds a 'gpt2' model, not "
                                          "an image-to-text one"):
        recaption(RecaptionConfig(model=gpt2), fashion_samples([0]), name="blip")
    with pytest.raises(ConfigError, match=r"^recipe step 'rewrite_llm': config key 'model': \S+ holds a 'blip' "
                                          "model, not a text-generation one"):
        RewriteLlm("rewrite_llm", RewriteLlmConfig(model=blip)).apply_batch(fashion_samples([0]))
    with pytest.raises(ConfigError, match="'prompt' has no {caption}"):
        RewriteLlm("rewrite_llm", RewriteLlmConfig(model=gpt2, prompt="rewrite this"))


# ---------------------------------------------------------------------------------------------------- rewrite_llm


def direct_rewrites(path: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, one prompt at a time (no padding), on the CPU: the rest of the prompt's last line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            output = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
        answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip())
    return answers


def test_rewrite_llm_equals_direct_generate_and_skips_what_does_not_fit(gpt2):
    captions = [FASHION.captions[i] for i in range(5)] + ["a photo of a shoe " * 200]  # the last is too long
    samples = [sample(f"s{i}", fashion(i), caption) for i, caption in enumerate(captions)]
    step = RewriteLlm("rewrite_llm", RewriteLlmConfig(model=gpt2, max_new_tokens=12, batch_size=6, device="cpu"))
    verdicts = step.apply_batch(samples)
    prompts = [RewriteLlmConfig().prompt.format(caption=" ".join(c.split())) for c in captions]
    expected = [" ".join(text.split()) for text in direct_rewrites(gpt2, prompts[:5], 12)]
    assert [s.json.get("rewrite", []) for s in samples] == [[text] if text else [] for text in expected] + [[]]
    assert len(set(expected)) > 2 and any(expected)
    lengths = [v.scores["prompt_tokens"] for v in verdicts]
    assert max(lengths[:5]) <= 512 - 12 < lengths[5]  # GPT-2's 512 positions leave no room for the long caption
    assert [v.scores["rewrites"] for v in verdicts] == [len(s.json.get("rewrite", [])) for s in samples]
    for index, s in enumerate(samples):
        document = json.loads(s.output_members()["json"])
        assert s.txt == captions[index] and document["source"] == "test"
        if document.get("rewrite"):
            assert document["caption_sources"] == {"rewrite": f"hf:{gpt2}"}


def test_rewrite_llm_sampling_is_deterministic_and_empty_rewrites_are_left_out(gpt2):
    def rewrite(step: RewriteLlm) -> list[list[str]]:
        samples = fashion_samples(range(4))
        assert all(v.keep for v in step.apply_batch(samples))
        return [s.json.get("rewrite", []) for s in samples]

    def sampler(seed: int) -> RewriteLlm:
        return RewriteLlm("rewrite_llm", RewriteLlmConfig(model=gpt2, max_new_tokens=10, num_rewrites=3,
                                                          do_sample=True, seed=seed))

    step = sampler(3)
    sampled = rewrite(step)
    assert sampled == rewrite(sampler(3)) != rewrite(sampler(4))
    assert all(len(texts) == len(set(texts)) <= 3 for texts in sampled) and sum(map(len, sampled)) > 4
    model, newline = step.rewriter.model, step.rewriter.tokenizer("\n")["input_ids"][0]
    with torch.no_grad():  # now the model answers every prompt with a line break at once
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[newline] * 100)
    assert rewrite(step) == [[], [], [], []]  # every rewrite is empty: left out, and no sample dropped


# ---------------------------------------------------------------------------------------------- retrieval_caption


def test_retrieval_caption_equals_a_brute_force_search_and_embeds_the_bank_once(tiny_run, tmp_path, monkeypatch):
    import vlp

    lines = [*FASHION.captions[:30], "", "  a red car  parked on the street", "a red car parked on the street"]
    (tmp_path / "bank.txt").write_text("\n".join(lines) + "\n")
    bank = list(dict.fromkeys(" ".join(line.split()) for line in lines if line.strip()))
    embedded = []
    embed_texts = Encoder.texts
    monkeypatch.setattr(Encoder, "texts", lambda self, texts: embedded.append(len(texts)) or embed_texts(self, texts))
    config = RetrievalCaptionConfig(model=str(tiny_run), bank=str(tmp_path / "bank.txt"), top_k=2, device="cpu",
                                    fast_decode=False)  # every pixel, as vlp.load decodes
    step = RetrievalCaption("retrieval_caption", config)
    samples = fashion_samples(range(8))  # their own captions are in the bank
    verdicts = step.apply_batch(samples[:5]) + step.apply_batch(samples[5:])
    assert embedded == [len(bank)]  # once, for both batches
    model = vlp.load(tiny_run, device="cpu")
    texts = torch.cat([model.embed_texts([caption]) for caption in bank])  # one at a time: no batching shared
    for s, verdict in zip(samples, verdicts):
        similarity = (model.embed_images([s.image]) @ texts.T)[0].tolist()
        ranked = sorted((-similarity[i], caption) for i, caption in enumerate(bank) if caption != s.caption)
        assert s.json["retrieved"] == [ranked[0][1], ranked[1][1]]
        assert verdict.scores == pytest.approx({"similarity": -ranked[0][0], "last_similarity": -ranked[1][0]},
                                               abs=1e-5)
        assert s.json["caption_sources"] == {"retrieved": f"retrieval:{tiny_run} bank:{tmp_path / 'bank.txt'}"}
    assert len({tuple(s.json["retrieved"]) for s in samples}) > 1
    with pytest.raises(ConfigError, match=r"'top_k' must be in \[1, 24\]"):
        RetrievalCaption("r", RetrievalCaptionConfig(model=str(tiny_run), bank=str(tmp_path / "bank.txt"), top_k=25))


# ------------------------------------------------------------------------------------------------------ recipes


def test_laclip_recipe_runs_end_to_end_and_reads_back_with_the_rewrites(gpt2, tmp_path, capsys):
    shard = write_shard(tmp_path / "in-000.tar", [(f"fm{i:04d}", {"jpg": fashion(i), "txt": FASHION.captions[i]
                                                                  .encode()}) for i in range(6)])
    recipe, out = REPO / "data_recipes/laclip_rewrite.yaml", tmp_path / "out"
    settings = [f"steps.rewrite_llm.model={gpt2}", "steps.rewrite_llm.max_new_tokens=12"]
    code = main(["recipe", "run", str(recipe), f"input={shard}", f"output={out}", "workers=0", *settings])
    assert code == 0, capsys.readouterr().err
    (source,), _ = open_sources([{"path": str(out / "00000.tar"), "caption_fields": ["txt", "json.rewrite"]}])
    raws = list(iter_in_order(source))
    expected = list(read_samples(shard))  # the step on the same samples, outside the engine
    load_recipe(recipe, [f"input={shard}", "output=x", *settings]).steps[0].apply_batch(expected)
    rewrites = [len(s.json.get("rewrite", [])) for s in expected]
    assert len(raws) == 6 and max(rewrites) <= 4 and sum(rewrites) > 6  # the recipe asks for four
    for raw, s in zip(raws, expected):
        assert caption_candidates(raw.captions, 4096) == [("txt", s.caption)] + [
            ("json.rewrite", text) for text in s.json.get("rewrite", [])]

    code = main(["recipe", "run", str(recipe), f"input={shard}", f"output={tmp_path / 'unset'}"])
    assert code == 2 and capsys.readouterr().err.endswith(
        "step 0 (rewrite_llm): config key 'model' is not set: give a local directory holding an HF text-generation "
        "model (e.g. a Llama)\n")
    code = main(["recipe", "run", str(recipe), f"input={shard}", f"output={tmp_path / 'no_model'}", "workers=0",
                 f"steps.rewrite_llm.model={REPO / 'data_recipes'}"])  # a directory, but no model: found in the run
    last = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert code == 2 and last.startswith(f"vlp recipe: error: recipe step 'rewrite_llm': config key 'model': "
                                         f"{REPO / 'data_recipes'} holds no model transformers can load: ")


def test_dedup_recipe_drops_near_duplicates_across_shards(tmp_path):
    members = {i: {"jpg": fashion(i), "txt": FASHION.captions[i].encode()} for i in range(8)}
    copy_of_5 = {"jpg": fashion(5, (120, 120), quality=20), "txt": b"a copy that comes first"}
    copy_of_2 = {"jpg": encode_with(FASHION.pil(2).convert("RGB").resize((64, 64)), "PNG"), "txt": b"a png copy"}
    write_shard(tmp_path / "in-000.tar", [*((f"fm{i:04d}", members[i]) for i in range(4)), ("copy_of_5", copy_of_5)])
    write_shard(tmp_path / "in-001.tar", [*((f"fm{i:04d}", members[i]) for i in range(4, 8)), ("copy_of_2", copy_of_2),
                                          ("exact_copy_of_7", members[7])])
    out = tmp_path / "out"
    code = main(["recipe", "run", str(REPO / "data_recipes/dedup.yaml"), f"input={tmp_path}/in-{{000..001}}.tar",
                 f"output={out}", "workers=0"])
    assert code == 0
    records = [json.loads(line) for path in sorted(out.glob("decisions/stage*/*.jsonl")) for line in path.open()]
    dropped = {r["key"]: (r["step"], r["reason"]) for r in records if not r["kept"]}
    assert dropped == {"exact_copy_of_7": ("exact_dedup", "duplicate"), "fm0005": ("phash_dedup", "near_duplicate"),
                       "copy_of_2": ("phash_dedup", "near_duplicate")}  # the first in input order stays
    distances = [r["scores"]["phash_dedup"]["distance"] for r in records if r["step"] == "phash_dedup"]
    assert len(distances) == 2 and all(0 <= distance <= 4 for distance in distances)
    report = json.loads((out / "report.json").read_text())
    assert next(row for row in report["steps"] if row["name"] == "phash_dedup")["summary"] == {
        "kept_images_with_near_duplicates": 2, "largest_group": 2}


def test_loading_a_recipe_with_model_steps_imports_no_model_library(gpt2, tmp_path):
    """A recipe is checked before anything heavy loads: the models, and the libraries, wait for the first batch."""
    bank = tmp_path / "bank.txt"
    bank.write_text("a photo of a shoe\n")
    recipe = tmp_path / "models.yaml"
    recipe.write_text(f"steps:\n  - recaption: {{model: {gpt2}}}\n  - rewrite_llm: {{model: {gpt2}}}\n"
                      f"  - retrieval_caption: {{model: {gpt2}, bank: {bank}}}\n  - phash_dedup\n")
    script = (f"import sys; from vlp.recipes import load_recipe; load_recipe({str(recipe)!r}, ['input=x', 'output=y']);"
              "print([m for m in ('torch', 'transformers', 'imagehash') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout == "[]\n", result.stderr
