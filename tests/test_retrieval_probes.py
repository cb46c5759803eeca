"""Retrieval metrics and probes on toy cases whose answers are known by hand (big_vision style), and retrieval
against OpenCLIP's own ``get_clip_metrics``."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip_train.train import get_clip_metrics

from vlp.eval.probes import knn_accuracy, knn_predict, linear_probe
from vlp.eval.retrieval import query_ranks, recall_at_k, retrieval_metrics


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    """Points on the unit circle: their dot product is the cosine of the angle between them, so the nearest
    neighbours are known from the angles."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], 1).float()


# 3 images x 6 texts, two captions per image (texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2).
# Images are the standard basis, so image i . text t == SIMILARITY[i, t] exactly and ties are exact.
SIMILARITY = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.3, 0.0],
                           [0.7, 0.8, 0.4, 0.6, 0.9, 0.1],
                           [0.2, 0.3, 0.5, 0.1, 0.4, 0.5]])
IMAGE_OF_TEXT = torch.tensor([0, 0, 1, 1, 2, 2])
# image 0: best caption 0.9, nothing above -> 1; image 1: best caption 0.6, beaten by 0.7, 0.8, 0.9 -> 4;
# image 2: best caption 0.5, tied by text 2 (a tie counts against) -> 2
IMAGE_RANKS = [1, 4, 2]
# per text column: correct image's score against the wrong images' scores (0.5 vs 0.5: a tie counts against)
TEXT_RANKS = [1, 3, 3, 1, 2, 1]


def test_hand_computed_ranks_with_ties_and_several_captions():
    images, texts = torch.eye(3), SIMILARITY.T.contiguous()
    image_ids = torch.arange(3)
    assert query_ranks(images, texts, image_ids, IMAGE_OF_TEXT).tolist() == IMAGE_RANKS
    assert query_ranks(texts, images, IMAGE_OF_TEXT, image_ids).tolist() == TEXT_RANKS


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 1024])
def test_hand_computed_metrics_do_not_depend_on_chunking(chunk_size):
    metrics = retrieval_metrics(torch.eye(3), SIMILARITY.T.contiguous(), IMAGE_OF_TEXT, ks=(1, 2, 5),
                                chunk_size=chunk_size)
    assert metrics == pytest.approx({
        "image_to_text_R@1": 1 / 3, "image_to_text_R@2": 2 / 3, "image_to_text_R@5": 1.0,
        "image_to_text_mean_rank": 7 / 3, "image_to_text_median_rank": 2.0,
        "text_to_image_R@1": 3 / 6, "text_to_image_R@2": 4 / 6, "text_to_image_R@5": 1.0,
        # ranks 1,1,1,2,3,3: the median averages the middle pair (1.5) and is floored, as OpenCLIP does
        "text_to_image_mean_rank": 11 / 6, "text_to_image_median_rank": 1.0,
    })


def test_angles_one_caption_per_image():
    # images every 30 degrees; each caption sits 20 degrees past its image, so the next image (10 degrees away)
    # is nearer to it and the previous image's caption (10 degrees away) is nearer to the image:
    # every query ranks its match second, except image 0 (no previous caption) and the last caption (no next image)
    image_angles = [0, 30, 60, 90, 120, 150]
    images, texts = unit_vectors(image_angles), unit_vectors([a + 20 for a in image_angles])
    metrics = retrieval_metrics(images, texts, torch.arange(6), ks=(1, 2))
    assert metrics == pytest.approx({
        "image_to_text_R@1": 1 / 6, "image_to_text_R@2": 1.0,
        "image_to_text_mean_rank": 11 / 6, "image_to_text_median_rank": 2.0,
        "text_to_image_R@1": 1 / 6, "text_to_image_R@2": 1.0,
        "text_to_image_mean_rank": 11 / 6, "text_to_image_median_rank": 2.0,
    })


def test_any_caption_within_k_is_a_hit_for_the_image():
    # image 0's first caption is far away (180 degrees), its second is on top of it: the image still hits at 1,
    # while the far caption's own text->image query misses
    images = unit_vectors([0, 90])
    texts = unit_vectors([180, 0, 90])
    metrics = retrieval_metrics(images, texts, torch.tensor([0, 0, 1]), ks=(1,))
    assert metrics["image_to_text_R@1"] == 1.0
    assert metrics["text_to_image_R@1"] == pytest.approx(2 / 3)


def dense_recall_at_k(image_features, text_features, text_of_image, ks=(1, 5, 10)):
    """recall_at_k as it was before chunking: the whole similarity matrix at once."""
    similarity = image_features.float() @ text_features.float().T
    metrics = {}
    positives = torch.zeros_like(similarity, dtype=torch.bool)
    positives[torch.arange(len(text_of_image)), text_of_image] = True
    image_rank = ((similarity >= similarity.gather(1, text_of_image[:, None])) & ~positives).sum(1)
    best_positive = similarity.T.masked_fill(~positives.T, float("-inf")).max(1).values
    text_rank = ((similarity.T >= best_positive[:, None]) & ~positives.T).sum(1)
    for k in ks:
        metrics[f"image_to_text_R@{k}"] = (image_rank < k).float().mean().item()
        metrics[f"text_to_image_R@{k}"] = (text_rank < k).float().mean().item()
    return metrics


def test_recall_at_k_with_shared_captions_and_ties_is_unchanged():
    generator = torch.Generator().manual_seed(0)
    texts = F.normalize(torch.randn(40, 8, generator=generator), dim=-1)
    text_of_image = torch.randint(0, 40, (100,), generator=generator)  # several images share a caption
    images = F.normalize(texts[text_of_image] + 0.8 * torch.randn(100, 8, generator=generator), dim=-1)
    images[50:60] = images[40:50]  # duplicate images give exact ties
    for chunk_size in (7, 1024):
        assert recall_at_k(images, texts, text_of_image, chunk_size=chunk_size) == \
            dense_recall_at_k(images, texts, text_of_image)


def test_recall_at_k_mirrors_the_multi_caption_protocol():
    # recall_at_k's texts-with-several-images is retrieval_metrics' images-with-several-texts with roles swapped
    generator = torch.Generator().manual_seed(1)
    images, texts = torch.randn(30, 6, generator=generator), torch.randn(12, 6, generator=generator)
    text_of_image = torch.randint(0, 12, (30,), generator=generator)
    mirrored = retrieval_metrics(texts, images, text_of_image)
    swap = {"image_to_text": "text_to_image", "text_to_image": "image_to_text"}
    for name, value in recall_at_k(images, texts, text_of_image).items():
        direction, k = name.split("_R@")
        assert value == pytest.approx(mirrored[f"{swap[direction]}_R@{k}"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_equals_openclip_get_clip_metrics(seed):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(300, 32, generator=generator), dim=-1)
    texts = F.normalize(images + 0.6 * torch.randn(300, 32, generator=generator), dim=-1)
    expected = get_clip_metrics(images, texts, logit_scale=1.0)
    ours = retrieval_metrics(images, texts, torch.arange(300), chunk_size=64)
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(float(value)), name
    assert 0.05 < ours["image_to_text_R@1"] < 0.95  # neither trivial nor hopeless, so the comparison has teeth
    recalls = recall_at_k(images, texts, torch.arange(300))
    assert recalls == pytest.approx({name: float(v) for name, v in expected.items() if "_R@" in name})


def test_knn_nearest_neighbour_on_the_circle():
    train = unit_vectors([0, 90, 180, 270])
    test = unit_vectors([10, 100, 200, 280, 300])
    assert knn_predict(train, torch.arange(4), test, k=1).tolist() == [0, 1, 2, 3, 3]


def test_knn_votes_are_temperature_weighted():
    # one neighbour of class 0 at similarity 1.0 against two of class 1 at 0.9: with T=0.07 the weights are
    # e^14.3 vs 2 e^12.9, so the single close neighbour wins; with a large T the vote is a plain majority
    spread = math.degrees(math.acos(0.9))
    train = unit_vectors([0, spread, -spread, 180])
    labels = torch.tensor([0, 1, 1, 2])
    test = unit_vectors([0])
    assert knn_predict(train, labels, test, k=3, temperature=0.07).tolist() == [0]
    assert knn_predict(train, labels, test, k=3, temperature=100.0).tolist() == [1]


def clusters(num_per_class: int, noise_seed: int, num_classes: int = 4, dim: int = 16):
    """Tight gaussian clusters around fixed, well-separated centers; train and test differ in the noise seed."""
    centers = 5 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(noise_seed))
    return centers[labels] + 0.3 * noise, labels


def random_labels(num: int, num_classes: int = 4, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num, dim, generator=generator), torch.randint(0, num_classes, (num,), generator=generator)


def test_probes_separate_clusters():
    train_x, train_y = clusters(50, noise_seed=1)
    test_x, test_y = clusters(25, noise_seed=2)
    assert linear_probe(train_x, train_y, test_x, test_y) == pytest.approx(1.0)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20) == pytest.approx(1.0)


def test_probes_are_at_chance_on_random_labels():
    train_x, train_y = random_labels(400, seed=0)
    test_x, test_y = random_labels(400, seed=1)
    # chance is 0.25; the standard deviation over 400 test points is about 0.02
    assert linear_probe(train_x, train_y, test_x, test_y) < 0.35
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20) < 0.35
