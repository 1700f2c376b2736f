"""A frozen encoder in a slide classifier: weights bit-identical after training, checkpoints
without it, the feature cache exact and invalidated, the resolution contract enforced."""
from __future__ import annotations

import pytest
import torch
from encoder_helpers import save_export, spec_dict, tiny_vit

import ats_wsi.run.train as run_train
from ats_wsi.classifier import ModelConfig, build_model, load_model, save_checkpoint
from ats_wsi.encoders import FeatureCache, attach_feature_cache
from ats_wsi.errors import EncoderError, EncoderResolutionError
from ats_wsi.run.train import TrainSettings, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _config(spec: dict, **kw) -> ModelConfig:
    base = dict(n_patches=4, patch_size=spec["patch_px"], patch_mpp=spec["mpp"], low_downsample=16.0,
                feature_spec=spec, feature_frozen=True, feature_dim=spec["dim"],
                attention_kwargs={"hidden": 4, "layers": 1, "pool": 4})
    return ModelConfig(**{**base, **kw})


def test_frozen_weights_are_bit_identical_after_training_and_stay_out_of_checkpoints(tiny_files, slides,
                                                                                     tmp_path, monkeypatch):
    built = []

    def keep(*args, **kw):
        built.append(real(*args, **kw))
        return built[-1]

    real = run_train.build_model
    monkeypatch.setattr(run_train, "build_model", keep)
    spec = spec_dict("export", tiny_files["export"])
    config = _config(spec, feature_adapter=8)
    history = train(slides["manifest"], tmp_path / "run", config,
                    TrainSettings(epochs=2, batch_size=2, lr=1e-2, feature_cache=str(tmp_path / "cache")),
                    progress=False)
    model = built[-1]
    original = tiny_files["module"].state_dict()
    trained = model.sampler.feature_net.backbone.state_dict()
    assert set(trained) == set(original)
    assert all(torch.equal(trained[k], original[k]) for k in original), "the frozen encoder changed"
    assert not any(p.requires_grad for p in model.sampler.feature_net.backbone.parameters())
    fresh = real(config)  # the same seed-free pieces: the adapter, head and attention net did train
    assert not torch.equal(fresh.head.weight, model.head.weight)
    # every lookup of both epochs is counted; the cache served some (validation repeats, overlaps)
    assert all(m.feature_hits + m.feature_misses > 0 for m in history)
    payload = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert not any(".backbone." in k for k in payload["state_dict"]), "a frozen encoder was saved"
    assert payload["config"]["feature_spec"]["weights_sha256"]
    again = load_model(tmp_path / "run" / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("feature_hits,feature_misses")


def test_a_fine_tuned_encoder_trains_and_its_weights_travel_in_the_checkpoint(tiny_files, tmp_path):
    spec = spec_dict("export", tiny_files["export"])
    model = build_model(_config(spec, feature_frozen=False))
    assert all(p.requires_grad for p in model.sampler.feature_net.backbone.parameters())
    with torch.no_grad():
        for p in model.sampler.feature_net.backbone.parameters():
            p.add_(0.01)
    save_checkpoint(tmp_path / "ft.pt", model)
    again = load_model(tmp_path / "ft.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(EncoderError, match="needs a frozen pretrained encoder"):
        attach_feature_cache(model, FeatureCache())


def _predict(model, slide, **kw):
    return model.predict(slide, seed=3, samples=2, **kw)


def test_the_cache_returns_exactly_what_a_recompute_gives_and_skips_the_reading(tiny_files, slides, tmp_path):
    model = build_model(_config(spec_dict("export", tiny_files["export"])))
    slide = slides["paths"][0]
    plain = _predict(model, slide)
    cache = attach_feature_cache(model, tmp_path / "cache")
    first = _predict(model, slide)
    assert cache.take_stats()["misses"] > 0
    assert (first.probabilities == plain.probabilities).all()
    attach_feature_cache(model, FeatureCache(tmp_path / "cache"))  # a later run: from disk only
    second = _predict(model, slide)
    stats = model.sampler.feature_net.cache.take_stats()
    assert stats["misses"] == 0 and second.patches_read == 0
    assert stats["disk_hits"] == len({tuple(b) for b in second.boxes_xywh.tolist()})  # each box read once from disk
    assert (second.probabilities == plain.probabilities).all()
    assert (second.boxes_xywh == plain.boxes_xywh).all()


def _seeded(config):
    torch.manual_seed(0)  # the same attention net, so the same cells are drawn
    return build_model(config)


def _misses(model, slide, cache):
    attach_feature_cache(model, cache)
    cache.take_stats()
    _predict(model, slide)
    return cache.take_stats()


def test_the_cache_is_invalidated_by_another_encoder_spec_or_patch_geometry(tiny_files, slides, tmp_path):
    slide, cache = slides["paths"][1], FeatureCache(tmp_path / "cache")
    spec = spec_dict("export", tiny_files["export"])
    assert _misses(_seeded(_config(spec)), slide, cache)["misses"] > 0
    assert _misses(_seeded(_config(spec)), slide, cache)["misses"] == 0  # the same: all hits
    other_weights = save_export(tiny_vit(seed=7), tmp_path / "other.pt2")
    for changed in (_config(spec_dict("export", other_weights)),               # another encoder
                    _config({**spec, "mean": [0.5, 0.5, 0.5]}),               # another spec
                    _config({**spec, "patch_px": 40}),                         # another patch geometry
                    _config(spec, mpp_tolerance=0.2)):                         # same boxes, same spec: hits
        stats = _misses(_seeded(changed), slide, cache)
        if changed.mpp_tolerance == 0.2:
            assert stats["misses"] == 0
        else:
            assert stats["hits"] == 0 and stats["misses"] > 0, changed


def test_the_memory_cache_is_bounded():
    cache = FeatureCache(memory_bytes=10 * 16 * 4)
    boxes = torch.arange(80).reshape(20, 4).numpy()
    cache.put("g", boxes, torch.rand(20, 16).numpy())
    found = cache.get("g", boxes)
    assert sum(f is not None for f in found) == 10 and found[-1] is not None and found[0] is None


def test_a_slide_read_at_another_resolution_than_the_spec_is_refused(tiny_files, slides):
    spec = spec_dict("export", tiny_files["export"])  # 32 px at 1.0 µm/px; the slides are 0.5 µm/px
    by_level = build_model(_config(spec, patch_mpp=None, patch_level=0))
    with pytest.raises(EncoderResolutionError, match=r"read at 0.5 µm/px, but encoder 'tiny' takes 32 px at 1 µm/px"):
        by_level.predict(slides["paths"][0])
    by_mpp = build_model(_config(spec, patch_mpp=2.0))
    with pytest.raises(EncoderResolutionError, match=str(slides["paths"][0])):
        by_mpp.predict(slides["paths"][0])
    with pytest.raises(EncoderResolutionError, match="read at 2 µm/px"):  # level 1 is 4x coarser
        build_model(_config(spec, patch_mpp=None, patch_level=1)).predict(slides["paths"][0])
    assert build_model(_config(spec)).predict(slides["paths"][0]).patches_read > 0  # 1.0 µm/px from level 0


def test_a_batch_of_slides_reads_and_encodes_only_the_boxes_the_cache_lacks(tiny_files, slides):
    """Training batches (several slides): cached boxes are neither read nor encoded; the
    features are those of the plain path, in the right slots."""
    from ats_wsi import open_slide
    from ats_wsi.classifier.features import EncoderFeatures
    from ats_wsi.patches import SlideSource

    spec = spec_dict("export", tiny_files["export"])
    encoder = build_model(_config(spec)).sampler.feature_net
    opened = [open_slide(p) for p in slides["paths"][:2]]
    source = SlideSource(opened, 0, low_downsample=16.0, mpp=1.0, workers=1)
    like, step = torch.zeros(1), EncoderFeatures()
    xy = torch.tensor([[[0, 0], [100, 40], [300, 500], [640, 64]], [[32, 32], [900, 700], [64, 0], [500, 500]]])
    _, plain = step(encoder, source, xy, 32, like)
    cache = FeatureCache()
    attach_feature_cache(encoder, cache)
    step(encoder, source, xy[:, [0, 2]], 32, like)  # boxes 0 and 2 of both slides cached
    cache.take_stats()
    before = source.patches_read
    _, got = step(encoder, source, xy, 32, like)
    assert source.patches_read - before == 4  # boxes 1 and 3 of each slide
    assert cache.take_stats() == {"hits": 4, "misses": 4, "disk_hits": 0, "broken": 0}
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-6)
    before = source.patches_read
    step(encoder, source, xy, 32, like)
    assert source.patches_read == before  # everything cached: nothing read
    for s in opened:
        s.close()
