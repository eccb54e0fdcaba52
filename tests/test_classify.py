"""classify(): softmax top-k with the checkpoint's labels, chunked batches, bad images reported."""

import numpy as np
import pytest

import convnext_np as cnp
from conftest import ALL_IMAGES, FIXTURES, IMAGE_DIR
from convnext_np.classify import iter_classify, softmax

CAMERA, CAT, COFFEE = (IMAGE_DIR / name for name in ("camera.png", "chelsea.png", "coffee.png"))


@pytest.fixture(scope="module")
def model():
    return cnp.from_pretrained(FIXTURES / "hf-safetensors")


def test_top_k_are_softmax_probabilities_best_first(model):
    preds = cnp.classify(CAMERA, model=model, top_k=10)
    assert len(preds) == 10
    scores = [p.score for p in preds]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert {p.index for p in preds} == set(range(10))
    assert all(p.label == f"LABEL_{p.index}" for p in preds)
    logits = model(model.preprocessor(CAMERA)).logits[0]
    assert preds[0].index == int(np.argmax(logits))
    assert preds[0].score == pytest.approx(float(softmax(logits)[preds[0].index]), rel=1e-6)


def test_list_in_list_of_lists_out_and_chunking_changes_nothing(model):
    one_by_one = [cnp.classify(p, model=model, top_k=3) for p in ALL_IMAGES]
    chunked = cnp.classify(ALL_IMAGES, model=model, top_k=3, batch_size=4)
    assert len(chunked) == len(ALL_IMAGES)
    for a, b in zip(one_by_one, chunked):
        assert [p.index for p in a] == [p.index for p in b]
        assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=1e-5)


def test_bad_image_raises_naming_it_and_iter_goes_on(model, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(cnp.ImageError, match="broken.jpg"):
        cnp.classify([CAMERA, bad], model=model)
    results = list(iter_classify([CAMERA, bad, CAT, COFFEE], model, top_k=1, batch_size=2))
    assert [r[0] for r in results] == [CAMERA, bad, CAT, COFFEE]
    assert results[1][1] is None and isinstance(results[1][2], cnp.ImageError)
    assert all(r[1] is not None and r[2] is None for i, r in enumerate(results) if i != 1)


def test_checkpoints_without_labels_get_imagenet_names(tmp_path):
    from safetensors.numpy import save_file
    from convnext_np.labels import imagenet_labels
    from convnext_np.testing import realistic_state_dict
    from convnext_np.weights import expected_shapes
    config = cnp.ConvNextConfig.from_variant("atto", num_labels=1000)
    save_file(realistic_state_dict(expected_shapes(config)), str(tmp_path / "m.safetensors"))
    model = cnp.from_pretrained(tmp_path / "m.safetensors")
    assert model.config.id2label[281] == "tabby, tabby cat"
    best = cnp.classify(CAT, model=model, top_k=1)[0]
    assert best.label == imagenet_labels(1000)[best.index]


def test_22k_labels_with_the_deleted_indices_are_reindexed():
    from convnext_np.labels import imagenet_labels
    names = imagenet_labels(21841)
    assert len(names) == 21841
    id2label = {i: f"goog{i}" for i in range(21843) if i not in (9205, 15027)}
    config = cnp.ConvNextConfig.from_dict({"id2label": {str(k): v for k, v in id2label.items()}})
    assert config.num_labels == 21841
    assert config.id2label[9204] == "goog9204" and config.id2label[9205] == "goog9206"
    assert config.id2label[21840] == "goog21842"


def test_arguments_are_checked(model):
    with pytest.raises(ValueError, match="top_k"):
        cnp.classify(CAMERA, model=model, top_k=0)
