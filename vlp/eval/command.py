"""``vlp eval``: zero-shot, retrieval, linear-probe or k-NN evaluation of a trained model on a dataset.

The metrics come from ``vlp.zeroshot`` / ``LoadedModel`` (zero-shot), ``vlp.eval.retrieval`` and
``vlp.eval.probes``; this module reads the data, embeds it in batches, and writes the report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vlp
from vlp.commands.evaluate import TASKS
from vlp.config import ConfigError
from vlp.eval.datasets import EvalData, EvalSplit, drop_unreadable, read_eval_data
from vlp.eval.loader import Embedding, try_load_image
from vlp.eval.probes import knn_accuracy, linear_probe
from vlp.eval.report import plot_confusion, plot_retrievals, write_results
from vlp.eval.retrieval import recall_at_k, retrieval_metrics
from vlp.eval.zeroshot import top_k_accuracy
from vlp.zeroshot import TEMPLATE_SETS, resolve_templates

SAMPLE_QUERIES = 4  # text queries drawn in the retrieval grid
GRID_TOP_K = 5


def start_embedding(model, data: EvalData, split: EvalSplit, args, desc: str) -> Embedding:
    """Starts decoding ``split``'s images in the DataLoader workers; ``finish_embedding`` collects them."""
    return Embedding(model, split.images, data.sources, args.batch_size, args.workers, args.fast_decode, desc)


def finish_embedding(embedding: Embedding, data: EvalData, split: EvalSplit) -> tuple[EvalSplit, torch.Tensor]:
    """(the split without its unreadable images, their L2-normalized features [N, D]); unreadable images are
    added to ``data.skipped``."""
    readable, features = embedding.result()
    return drop_unreadable(split, readable, data.skipped), features


def embed_split(model, data: EvalData, split: EvalSplit, args, desc: str) -> tuple[EvalSplit, torch.Tensor]:
    """``start_embedding`` then ``finish_embedding``, for a task with nothing to do meanwhile."""
    return finish_embedding(start_embedding(model, data, split, args, desc), data, split)


def _need_labels(data: EvalData, task: str, names: bool = True) -> None:
    """Zero-shot needs class names; the probes need labels only."""
    if data.test.labels is None:
        raise ConfigError(f"task '{task}' needs class labels, and data '{data.name}' has none")
    if names and data.class_names is None:
        raise ConfigError(f"task '{task}' needs class names, and data '{data.name}' has labels only: "
                          "pass --classes FILE (one name a line) or put classnames.txt beside the data")


def _templates(arg: list[str] | None, data: EvalData):
    """``--templates``: one set name or template strings; without it, the data's own prompts if it has some,
    else the model's default set."""
    if arg is None:
        return data.templates
    templates = arg[0] if len(arg) == 1 and arg[0] in TEMPLATE_SETS else arg
    try:
        resolve_templates(templates)  # a bad template is a one-line error rather than a traceback
    except ValueError as err:
        raise ConfigError(f"--templates: {err}") from None
    return templates


def evaluate_zeroshot(model, data: EvalData, args, out_dir: Path) -> dict:
    """Top-1 / top-5 accuracy and mean per-class accuracy of the prompt-ensembled zero-shot classifier, plus a
    confusion-matrix PNG."""
    _need_labels(data, "zeroshot")
    templates = _templates(args.templates, data)
    embedding = start_embedding(model, data, data.test, args, "zeroshot")
    classifier = model.zero_shot_classifier(data.class_names, templates)  # while the workers decode
    test, features = finish_embedding(embedding, data, data.test)
    labels = torch.as_tensor(test.labels, dtype=torch.long)
    logits = classifier.logits(features, model.model.scale().item())
    num_classes = len(data.class_names)
    confusion = torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1)
    metrics = {"top1": top_k_accuracy(logits, labels, 1),
               "mean_per_class_top1": per_class[confusion.sum(1) > 0].mean().item()}
    if num_classes > 5:
        metrics["top5"] = top_k_accuracy(logits, labels, 5)
    figure = plot_confusion(confusion, data.class_names, out_dir / "confusion_matrix.png")
    return {"metrics": metrics, "counts": {"images": len(test), "classes": num_classes},
            "settings": {"templates": templates if isinstance(templates, (str, type(None))) else list(templates)},
            "figures": [figure.name]}


def _retrieval_protocol(test: EvalSplit) -> str:
    """'unique-captions' where images share caption strings and each has one (the training loop's protocol:
    identical captions are one text, correct for every image carrying it); else 'multi-caption' (COCO /
    Flickr30k: each text belongs to one image, an image hits when any of its captions ranks within k)."""
    one_each = len(test.captions) == len(test) and sorted(test.image_of_text) == list(range(len(test)))
    return "unique-captions" if one_each and len(set(test.captions)) < len(test.captions) else "multi-caption"


def _retrieval_metrics(model, test: EvalSplit, image_features: torch.Tensor, protocol: str):
    """(metrics, the texts embedded, their features) under ``protocol``."""
    if protocol == "multi-caption":
        text_features = model.embed_texts(test.captions)
        return retrieval_metrics(image_features, text_features, torch.as_tensor(test.image_of_text)), \
            test.captions, text_features
    texts = sorted(set(test.captions))
    index = {text: i for i, text in enumerate(texts)}
    caption_of_image = dict(zip(test.image_of_text, test.captions))
    text_of_image = torch.tensor([index[caption_of_image[i]] for i in range(len(test))])
    text_features = model.embed_texts(texts)
    return recall_at_k(image_features, text_features, text_of_image), texts, text_features


def evaluate_retrieval(model, data: EvalData, args, out_dir: Path) -> dict:
    """Image->text and text->image Recall@1/5/10 (and ranks under the multi-caption protocol), plus a PNG grid
    of the top-5 images for a few sample text queries."""
    if data.test.captions is None:
        raise ConfigError(f"task 'retrieval' needs captions, and data '{data.name}' has none")
    test, image_features = embed_split(model, data, data.test, args, "retrieval")
    protocol = _retrieval_protocol(test)
    metrics, texts, text_features = _retrieval_metrics(model, test, image_features, protocol)
    figure = _retrieval_grid(data, test, texts, text_features, image_features, out_dir / "retrieval_examples.png")
    return {"metrics": metrics, "counts": {"images": len(test), "texts": len(texts)},
            "settings": {"protocol": protocol}, "figures": [figure.name]}


def _retrieval_grid(data: EvalData, test: EvalSplit, texts: list[str], text_features, image_features,
                    path: Path) -> Path:
    """Draws the top images of evenly spaced sample queries; a retrieved image is correct when one of its
    captions is the query."""
    captions_of = {}
    for text, image in zip(test.captions, test.image_of_text):
        captions_of.setdefault(image, set()).add(text)
    queries = sorted({round(i * (len(texts) - 1) / max(1, SAMPLE_QUERIES - 1)) for i in range(SAMPLE_QUERIES)})
    top = (text_features[queries] @ image_features.T).topk(min(GRID_TOP_K, len(test)), dim=1).indices.tolist()
    hits = [[texts[q] in captions_of.get(i, ()) for i in row] for q, row in zip(queries, top)]
    images = [[try_load_image(test.images[i], data.sources) for i in row] for row in top]
    return plot_retrievals([texts[q] for q in queries], images, hits, path)


def evaluate_probe(model, data: EvalData, args, out_dir: Path) -> dict:
    """Top-1 accuracy of a linear probe or a k-NN classifier on frozen image features."""
    _need_labels(data, args.task, names=False)
    train, test = data.probe_splits()
    train, train_features = embed_split(model, data, train, args, "probe train")
    test, test_features = embed_split(model, data, test, args, "probe test")
    if not len(train) or not len(test):
        raise ConfigError(f"task '{args.task}' needs readable training and test images in '{data.name}'")
    probe = linear_probe if args.task == "linear-probe" else knn_accuracy
    accuracy = probe(train_features, torch.as_tensor(train.labels), test_features, torch.as_tensor(test.labels))
    return {"metrics": {"top1": accuracy},
            "counts": {"train_images": len(train), "test_images": len(test),
                       "classes": len(set(train.labels) | set(test.labels))},
            "settings": {}, "figures": []}


EVALUATORS = {"zeroshot": evaluate_zeroshot, "retrieval": evaluate_retrieval, "linear-probe": evaluate_probe,
              "knn": evaluate_probe}


def run_eval(args: argparse.Namespace) -> None:
    """The ``vlp eval`` command: checks the arguments and data before the (slower) model load."""
    if args.task not in TASKS:
        raise ConfigError(f"unknown task '{args.task}'; valid: {', '.join(TASKS)}")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ConfigError("--batch-size and --limit must be positive")
    if args.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    data = read_eval_data(args.data, args.limit, args.classes)
    model = vlp.load(args.model)
    out_dir = Path(args.output) if args.output else Path(args.model) / "eval" / args.task
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EVALUATORS[args.task](model, data, args, out_dir)
    result["counts"]["skipped_unreadable"] = len(data.skipped)
    results = {"task": args.task, "model": str(args.model), "checkpoint": str(model.checkpoint),
               "data": data.name, **result, "skipped": data.skipped}
    print(write_results(out_dir, results), end="")
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable image(s), listed in {out_dir / 'results.json'}")
    print(f"results: {out_dir}")

