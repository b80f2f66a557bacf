"""`rare merge`: weight interpolation, the merged model's settings, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rare.model import RareConfig, load_model
from tests.test_cli import rare
from trainer.merge import MergeError, interpolate, merge_models
from trainer.output import write_model_dir

PARAM = "0.model.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A 'RARe model' (the base weights with RARe settings) and a 'k=0 model' (perturbed weights)."""
    root = tmp_path_factory.mktemp("merge")
    first = load_model(None, "cpu", cache=False)
    settings = RareConfig(k=2, pooling="query", trained=True, training={"lr": 1e-4})
    write_model_dir(first.st, settings, root / "a")
    second = load_model(None, "cpu", cache=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in second.st.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    write_model_dir(second.st, RareConfig(k=0, trained=True), root / "b")
    return root


def test_interpolate_is_a_weighted_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([5, 5])}
    out = interpolate(a, b, 0.25)
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0])) and out["ids"].tolist() == [0, 1]
    assert torch.equal(interpolate(a, b, 1.0)["w"], a["w"])


def test_interpolate_refuses_other_architectures():
    with pytest.raises(MergeError, match="only in one: extra"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.zeros(2), "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(MergeError, match=r"w: \(2,\) vs \(3,\)"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)


def test_merged_model_weights_settings_and_reload(two_models, tmp_path):
    out = tmp_path / "merged"
    merge_models(str(two_models / "a"), str(two_models / "b"), 0.25, out)
    a, b = (load_model(str(two_models / n), "cpu", cache=False) for n in ("a", "b"))
    merged = load_model(str(out), "cpu", cache=False)
    got = merged.st.state_dict()[PARAM]
    want = 0.25 * a.st.state_dict()[PARAM] + 0.75 * b.st.state_dict()[PARAM]
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, b.st.state_dict()[PARAM])
    # Queried as the first model: its k, pooling and training record, plus the merge.
    assert merged.rare.k == 2 and merged.rare.pooling == "query" and merged.rare.training["lr"] == 1e-4
    record = merged.rare.training["merged"]
    assert record["weight"] == 0.25 and record["second_rare"]["k"] == 0
    texts = ["how is honey made", "bees make honey"]
    ea, eb, em = (m.encode(texts) for m in (a, b, merged))
    assert not np.allclose(em, ea, atol=1e-4) and not np.allclose(em, eb, atol=1e-4)


def test_merging_a_model_with_itself_changes_nothing(two_models, tmp_path):
    merge_models(str(two_models / "a"), str(two_models / "a"), 0.5, tmp_path / "same")
    texts = ["how is honey made"]
    a = load_model(str(two_models / "a"), "cpu", cache=False)
    same = load_model(str(tmp_path / "same"), "cpu", cache=False)
    np.testing.assert_allclose(same.encode(texts), a.encode(texts), atol=1e-6)


def test_cli_merge_and_its_errors(two_models, tmp_path):
    ok = rare("merge", str(two_models / "a"), str(two_models / "b"), "--output", str(tmp_path / "m"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m" / "rare_config.json").is_file()
    bad = rare("merge", str(two_models / "a"), str(two_models / "b"), "--weight", "1.5")
    assert bad.returncode == 2 and "weight must be in (0, 1]" in bad.stderr and "Traceback" not in bad.stderr
    missing = rare("merge", str(two_models / "a"), str(tmp_path / "nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
