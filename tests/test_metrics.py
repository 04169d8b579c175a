import numpy as np
import pytest
import torch

from laser.evaluation.metrics import psnr, segmentation_metrics, ssim

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_psnr_and_ssim():
    torch.manual_seed(0)
    image = torch.rand(32, 40, 3)
    assert psnr(image, image) == float("inf")
    assert psnr(image, (image + 0.1).clamp(0, 1)) == pytest.approx(
        -10 * np.log10(((image + 0.1).clamp(0, 1) - image).pow(2).mean().item()), rel=1e-5)
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(image, torch.rand(32, 40, 3)) < 0.2


@pytest.mark.parametrize("seed", range(5))
def test_segmentation_metrics_match_scikit_learn(seed):
    """The 3D-OVS evaluation: sklearn jaccard_score(average=None) per view (absent class -> 0) and subset
    accuracy_score on multilabel rows, including unlabelled and multi-label pixels."""
    rng = np.random.default_rng(seed)
    num_classes, truths, scores, ious, accuracies = 5, [], [], [], []
    for _ in range(3):
        truth = rng.random((12, 9, num_classes)) < 0.25
        truth[..., 4] = False                       # a class absent from ground truth
        score = rng.normal(size=(12, 9, num_classes))
        prediction = np.eye(num_classes, dtype=bool)[score.argmax(-1)].reshape(-1, num_classes)
        flat = truth.reshape(-1, num_classes)
        ious.append(sklearn_metrics.jaccard_score(flat, prediction, average=None, zero_division=0))
        accuracies.append(sklearn_metrics.accuracy_score(flat, prediction))
        truths.append(torch.from_numpy(truth))
        scores.append(torch.from_numpy(score))
    ours = segmentation_metrics(truths, scores)
    np.testing.assert_allclose(np.array(ours["per_view_iou"]), np.stack(ious), rtol=1e-6)
    assert ours["miou"] == pytest.approx(np.mean(ious))
    assert ours["accuracy"] == pytest.approx(np.mean(accuracies))


def test_segmentation_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_metrics([torch.zeros(4, 4, 3, dtype=torch.bool)], [torch.zeros(4, 5, 3)])
    with pytest.raises(ValueError, match="no annotated views"):
        segmentation_metrics([], [])


def test_per_query_masks_each_phrase_alone_and_scores_only_the_views_where_it_is_present():
    from laser.evaluation.metrics import normalized_relevancy, per_query_metrics

    truth = torch.zeros(1, 4, 3, dtype=torch.bool)             # one view of 4 pixels, 3 phrases; phrase 2 absent
    truth[0, :2, 0] = True
    truth[0, 2:, 1] = True
    scores = torch.tensor([[[0.9, 0.8, 0.1], [0.8, 0.9, 0.2], [0.1, 0.85, 0.3], [0.0, 0.7, 0.4]]])
    normalised = normalized_relevancy(scores)
    assert torch.allclose(normalised.amin(dim=(0, 1)), torch.zeros(3))
    assert torch.allclose(normalised.amax(dim=(0, 1)), torch.ones(3))
    result = per_query_metrics([truth], [scores], threshold=0.7)
    # phrase 0: normalised (1, .89, .11, 0) -> pixels 0, 1: IoU 1. Phrase 1: (.5, 1, .75, 0) -> pixels 1, 2: 1/3.
    assert result["per_phrase_iou"][0] == pytest.approx(1.0) and result["per_phrase_iou"][1] == pytest.approx(1 / 3)
    assert result["per_phrase_iou"][2] is None and result["miou"] == pytest.approx(2 / 3)


def test_unlabelled_pixels_count_as_wrong_unless_the_scene_has_a_transparent_background():
    truth = torch.zeros(1, 4, 2, dtype=torch.bool)
    truth[0, 0, 0] = truth[0, 1, 1] = True                       # two labelled pixels, two background
    scores = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]]])        # [1, 4, 2]
    scored = segmentation_metrics([truth], list(scores))
    assert scored["accuracy"] == 0.5 and scored["miou"] == 0.5              # background counted as wrong
    left_out = segmentation_metrics([truth], list(scores), score_unlabelled=False)
    assert left_out["accuracy"] == 1.0 and left_out["miou"] == 1.0
