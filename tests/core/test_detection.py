import numpy as np
import pytest
from PIL import Image

from mcm_core.bench.detection_data import DetectionImage, draw_canvas, make_images, simulate_detector
from mcm_core import MinorityMiner
from mcm_core.baselines import entropy
from mcm_core.detection import (as_boxes, box_iou, box_scores, crop_box, crop_region, image_scores, jittered_boxes,
                                sample_background_boxes, cold_start_classes)


def test_box_iou_known_values_and_bad_boxes():
    a = [[0, 0, 0.5, 0.5]]
    b = [[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5], [0.5, 0.5, 1, 1]]
    assert box_iou(a, b)[0] == pytest.approx([1.0, 1 / 3, 0.0])
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)
    with pytest.raises(ValueError, match="x1 > x0"):
        as_boxes([[0.5, 0, 0.2, 1]])
    with pytest.raises(ValueError, match="finite"):
        as_boxes([[0, 0, np.nan, 1]])


def test_crop_is_a_square_around_the_box_with_black_outside():
    # a 100 x 50 image, white; a 20 x 10 px box at its top-left corner
    image = Image.new("L", (100, 50), 255)
    left, top, right, bottom = crop_region([0, 0, 0.2, 0.2], 100, 50, context=0.25)
    assert right - left == bottom - top == 30  # longer side 20 px x (1 + 2 x 0.25)
    assert ((left + right) / 2, (top + bottom) / 2) == (10, 5)
    patch = np.asarray(crop_box(image, [0, 0, 0.2, 0.2], context=0.25))
    assert patch.shape == (30, 30)
    assert patch[0, 0] == 0 and patch[-1, -1] == 255  # outside the image: black


def test_background_boxes_avoid_objects_and_are_deterministic():
    gt = np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8]])
    bg = sample_background_boxes(gt, 20, np.random.default_rng(3))
    assert len(bg) == 20
    assert box_iou(bg, gt).max() < 0.3
    assert ((bg >= 0) & (bg <= 1)).all()
    assert np.array_equal(bg, sample_background_boxes(gt, 20, np.random.default_rng(3)))
    # an image without objects gets boxes of the default size; an image full of one object gets none
    empty = sample_background_boxes([], 30, np.random.default_rng(0))
    sides = empty[:, 2:] - empty[:, :2]
    assert len(empty) == 30 and sides.min() >= 0.14 - 1e-9 and sides.max() <= 0.28 + 1e-9
    assert len(sample_background_boxes([[0, 0, 1, 1]], 5, np.random.default_rng(0), tries=5)) == 0


def test_jittered_boxes_stay_on_their_object():
    gt = np.array([[0.1, 0.1, 0.3, 0.4], [0.6, 0.5, 0.9, 0.7]])
    jit = jittered_boxes(gt, 3, np.random.default_rng(0))
    assert jit.shape == (6, 4)
    iou = box_iou(jit, gt)
    assert (iou[:3, 0] > 0.45).all() and (iou[3:, 1] > 0.45).all()  # copies of box 0 first, then box 1
    assert not np.allclose(jit[0], gt[0])
    assert jittered_boxes(gt, 0, np.random.default_rng(0)).shape == (0, 4)


def test_image_scores_average_the_k_most_confident():
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.5])
    conf = np.array([0.2, 0.9, 0.8, 0.7, 0.6])
    offsets = np.array([0, 4, 4, 5])  # image 0: 4 candidates, image 1: none, image 2: one
    out = image_scores(scores, conf, offsets, k=3)
    assert out == pytest.approx([(0.1 + 0.2 + 0.3) / 3, 0.0, 0.5])
    assert image_scores(scores, conf, offsets, k=1)[0] == pytest.approx(0.1)
    assert image_scores(scores, conf, offsets, k=None)[0] == pytest.approx(np.mean(scores[:4]))
    assert image_scores([], [], [0], k=3).shape == (0,)
    with pytest.raises(ValueError, match="do not align"):
        image_scores(scores, conf, [0, 2], k=3)


def test_canvas_boxes_are_the_extent_of_the_pasted_digit():
    digit = np.zeros((28, 28), np.float32)
    digit[4:24, 10:18] = 1.0
    image = draw_canvas(np.stack([digit, digit]), np.array([3, 7]), np.random.default_rng(0), size=96,
                        scale=(28, 28))
    assert list(image.classes) == [3, 7]
    for box in image.boxes:
        x0, y0, x1, y1 = (box * 96).round().astype(int)
        assert (image.pixels[y0:y1, x0:x1] > 25).mean() > 0.9  # the box is (almost) all digit
        assert (x1 - x0, y1 - y0) == (8, 20)
    assert box_iou(image.boxes[:1], image.boxes[1:])[0, 0] < 0.05


def test_made_images_have_rare_classes_and_are_deterministic():
    rng = np.random.default_rng(0)
    digits = rng.random((200, 28, 28)).astype(np.float32) * (rng.random((200, 28, 28)) > 0.7)
    labels = np.repeat(np.arange(10), 20)
    a = make_images(digits, labels, 60, seed=1, tail=(0, 1), tail_prob=0.02)
    b = make_images(digits, labels, 60, seed=1, tail=(0, 1), tail_prob=0.02)
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    classes = np.concatenate([x.classes for x in a])
    assert 60 <= len(classes) <= 240
    assert np.isin(classes, [0, 1]).mean() < 0.1


def test_simulated_detector_finds_objects_with_lower_confidence_on_the_tail():
    rng = np.random.default_rng(0)
    image = DetectionImage(np.zeros((96, 96), np.uint8), np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.8, 0.9]]),
                           np.array([0, 5]))
    found = [simulate_detector(image, rng, tail=(0,), false_positives=0.0) for _ in range(300)]
    conf_tail = [c[np.argmax(box_iou(b, image.boxes[:1])[:, 0])] for b, c in found if len(b) == 2]
    conf_head = [c[np.argmax(box_iou(b, image.boxes[1:])[:, 0])] for b, c in found if len(b) == 2]
    assert np.mean(conf_tail) < np.mean(conf_head) - 0.1
    assert 0.85 < np.mean([len(b) for b, _ in found]) / 2 <= 1.0
    with_fp = [simulate_detector(image, rng, tail=(0,), false_positives=3.0) for _ in range(50)]
    assert np.mean([len(b) for b, _ in with_fp]) > 3.5


def test_a_miner_with_its_own_cold_start_term_gets_it_once(blobs):
    """strategy="reconstruction_cold" already adds uncertainty x novelty in cold start: box_scores must
    not add it a second time (1 - (1 - S)(1 - HN)^2)."""
    x, y, _ = blobs([60, 60, 60, 60], num_classes=4, dim=10, seed=1)
    own = MinorityMiner(4, seed=0, ae_min_steps=200, ae_max_steps=600, n_models=1,
                        strategy="reconstruction_cold").fit(x[y != 2], y[y != 2])
    assert cold_start_classes(own, 3) == [2]
    s, bound = box_scores(own, x, 3)
    assert np.array_equal(s, own.score_samples(x)) and bound == own.score_upper_bound


def test_box_scores_add_uncertainty_times_novelty_until_a_tail_class_has_a_labeled_box(blobs):
    """Classes 0-2 are objects, 3 is the background class. With class 2 never labeled and no other
    tail class, the box score is 1 - (1 - S/bound)(1 - H N) by hand, in [0, 1], and ranks the unseen
    class's boxes above the labeled ones. Once a tail class has a labeled box (class 1 rare, 2 still
    unlabeled) or every class has, it is the miner's own score and bound."""
    x, y, _ = blobs([60, 60, 60, 60], num_classes=4, dim=10, seed=1)
    fast = dict(ae_min_steps=200, ae_max_steps=600, n_models=1, strategy="reconstruction")
    cold = MinorityMiner(4, seed=0, **fast).fit(x[y != 2], y[y != 2])
    assert cold_start_classes(cold, 3) == [2]
    s, bound = box_scores(cold, x, 3)
    p = cold.predict_proba(x).astype(np.float64)
    hn = entropy(p) / np.log(4) * cold.novelty_score(x)
    expected = 1 - (1 - cold.score_samples(x) / cold.score_upper_bound) * (1 - hn)
    assert bound == 1.0 and np.allclose(s, expected) and 0 <= s.min() and s.max() <= 1
    assert np.array_equal(box_scores(cold, x, 3, probs=cold.predict_proba(x))[0], s)  # the caller's probabilities
    assert s[y == 2].mean() > s[y != 2].mean()
    alone, alone_bound = box_scores(cold, x, 3, cold_start=False)
    assert np.array_equal(alone, cold.score_samples(x)) and alone_bound == cold.score_upper_bound
    rare = (y != 2) & ((y != 1) | (np.cumsum(y == 1) <= 5))  # 5 boxes of class 1, none of class 2
    mixed = MinorityMiner(4, seed=0, **fast).fit(x[rare], y[rare])
    assert mixed.tail_ == [1, 2] and cold_start_classes(mixed, 3) == []
    assert np.array_equal(box_scores(mixed, x, 3)[0], mixed.score_samples(x))
    warm = MinorityMiner(4, seed=0, **fast).fit(x, y)
    assert cold_start_classes(warm, 3) == []
    s, bound = box_scores(warm, x, 3)
    assert np.array_equal(s, warm.score_samples(x)) and bound == warm.score_upper_bound
    # the background class (3) is not an object class: never labeled, it does not start the cold start
    no_background = MinorityMiner(4, seed=0, **fast).fit(x[y != 3], y[y != 3])
    assert no_background.tail_ == [3] and cold_start_classes(no_background, 3) == []


def test_benchmark_marks_candidates_covering_a_tail_object_for_the_perfect_score_row():
    from mcm_core.bench.detection import tail_candidates

    image = DetectionImage(np.zeros((10, 10), np.uint8), np.array([[0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]),
                           np.array([1, 5]))
    candidates = np.array([[0.0, 0.0, 0.4, 0.38],    # the tail object, IoU 0.95
                           [0.5, 0.5, 0.9, 0.9],     # the head object
                           [0.2, 0.2, 0.6, 0.6],     # cuts through both: IoU < 0.5 with each
                           [0.0, 0.0, 0.1, 0.1]])    # a small part of the tail object
    hits = tail_candidates([image, image], [(candidates, np.ones(4)), (np.zeros((0, 4)), np.zeros(0))], (1,))
    assert hits.tolist() == [True, False, False, False]
    empty = DetectionImage(np.zeros((10, 10), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int64))
    assert tail_candidates([empty], [(candidates[:2], np.ones(2))], (1,)).tolist() == [False, False]
