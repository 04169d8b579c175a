"""Text embeddings of the class prompts (LASER.md §3.5): ``T = normalize(CLIP_text(classes))``, ``[C, 512]``.

The prompts are the raw ``classes.txt`` lines in sorted order, as the scene loader gives them in ``Scene.classes``.
Each distinct prompt list is encoded once and reused (a scene's T and T̃ are asked for at every step).
LERF's relevancy (LASER.md §14.6) also needs its canonical phrases, encoded with the scene's prompts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from laser.language.clip_model import ClipModel
from laser.language.text_augmentation import repeat_prompts

CANONICAL_PHRASES = ("object", "things", "stuff", "texture")   # LERF's negatives of every relevancy query


class TextEncoder:
    """L2-normalised CLIP text embeddings, memoised per prompt list."""

    def __init__(self, clip: ClipModel):
        self.clip = clip
        self._memo: dict[tuple[str, ...], Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """Prompts (C strings) -> ``[C, D]`` fp32 unit vectors on the CLIP's device."""
        key = tuple(prompts)
        if key not in self._memo:
            self._warn_if_truncated(key)
            tokens = self.clip.tokenizer(list(key)).to(self.clip.device)
            with torch.no_grad(), self.clip.autocast():
                embeddings = self.clip.model.encode_text(tokens)
            self._memo[key] = F.normalize(embeddings.float(), dim=-1)
        return self._memo[key]

    def _warn_if_truncated(self, prompts: tuple[str, ...]) -> None:
        """Warn for each prompt longer than CLIP's context: the tokenizer silently cuts it."""
        encode = getattr(self.clip.tokenizer, "encode", None)
        if encode is None:  # tokenizers without a raw BPE encoder (HF ones) cannot be checked this way
            return
        room = self.clip.context_length - 2  # start- and end-of-text tokens
        for prompt in prompts:
            length = len(encode(prompt))
            if length > room:
                warnings.warn(
                    f"text prompt of {length} tokens is longer than CLIP's context ({room} + 2) and is truncated: "
                    f"{prompt[:60]!r}...",
                    stacklevel=3,
                )


@dataclass
class SceneText:
    """A scene's text embeddings, computed once."""

    classes: list[str]
    embeddings: Tensor  # [C, D] T: the class prompts, L2-normalised
    repeated: Tensor    # [C, D] T̃: the repeated prompts "p p" (§8), L2-normalised
    canonical: Tensor   # [4, D] LERF's canonical phrases (CANONICAL_PHRASES), L2-normalised


def encode_scene_text(encoder: TextEncoder, classes: Sequence[str], repeats: int = 2) -> SceneText:
    """T and T̃ of a scene's class prompts (sorted, as in ``Scene.classes``), and the canonical phrases."""
    return SceneText(
        classes=list(classes),
        embeddings=encoder(classes),
        repeated=encoder(repeat_prompts(classes, repeats)),
        canonical=encoder(CANONICAL_PHRASES),
    )
