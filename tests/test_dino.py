"""DINO patch features through timm: optional weights (never downloaded), any image size, architecture from the file."""

import laser  # noqa: F401  (before timm: torchvision must import on CPU torch)
import pytest
import timm
import torch

from laser.language import dino as dino_module
from laser.language.dino import DinoExtractor, load_dino


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True,
                             depth=2, embed_dim=64, num_heads=1)


def test_absent_weights_give_none_and_one_message(tmp_path, monkeypatch, capsys):
    assert load_dino(str(tmp_path / "dino.pth")) is None
    message = capsys.readouterr().out
    assert "continues without the DINO regulariser" in message and "dino.pth does not exist" in message
    # No path: only the caches on disk are searched (empty here).
    monkeypatch.setattr(dino_module, "_cached_hub_file", lambda *args: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert load_dino() is None
    assert capsys.readouterr().out.count("continues without the DINO regulariser") == 1


def test_extractor_gives_patch_features_of_the_last_block():
    vit = tiny_vit()
    extractor = DinoExtractor(vit)
    images = torch.rand(2, 48, 64, 3)
    features = extractor(images)
    assert features.shape == (2, 48 // 8, 64 // 8, 64)
    assert extractor(torch.rand(1, 50, 67, 3)).shape == (1, 6, 8, 64)          # partial patches are ignored
    # The last block's tokens without the class token, before the final norm, after ImageNet normalisation.
    pixels = ((images - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])).permute(0, 3, 1, 2)
    with torch.no_grad():
        tokens = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels))))
    torch.testing.assert_close(features, tokens[:, 1:].reshape(2, 6, 8, 64))


def test_weights_file_and_cache_load_with_their_own_architecture(tmp_path, monkeypatch):
    vit = tiny_vit(seed=1)
    images = torch.rand(1, 32, 40, 3)
    path = tmp_path / "checkpoints" / "dino_deitsmall8_pretrain.pth"            # the release's name, in torch hub
    path.parent.mkdir()
    torch.save(vit.state_dict(), path)
    loaded = load_dino(str(path))
    assert (loaded.patch_size, loaded.embed_dim, len(loaded.vit.blocks)) == (8, 64, 2)
    torch.testing.assert_close(loaded(images), DinoExtractor(vit)(images))
    monkeypatch.setattr(dino_module, "_cached_hub_file", lambda *args: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.testing.assert_close(load_dino()(images), DinoExtractor(vit)(images))


def test_bad_inputs_are_refused(tmp_path):
    path = tmp_path / "not_a_vit.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a ViT state dict"):
        load_dino(str(path))
    with pytest.raises(ValueError, match="timm knows no pretrained model"):
        load_dino(model="no_such_model")
    with pytest.raises(ValueError, match="dynamic_img_size"):
        DinoExtractor(timm.create_model("vit_small_patch8_224", pretrained=False, depth=1, embed_dim=64,
                                        num_heads=1))
