"""Masked image modeling (chapter 04): hide most of an image's patches and
reconstruct their pixels from the rest.

- :class:`MAE`: the encoder sees only the visible patches; a light decoder
  fills in mask tokens and predicts the hidden patches' pixels.
- :class:`SimMIM`: the encoder sees every patch, the hidden ones replaced by
  a learnt mask token; a linear head predicts their pixels.
- :class:`MaskedImageModel`: what the two share (views, targets, loss).
- :func:`random_patch_mask`: the batched, index-based mask both share.
- :func:`reconstruction_images`: masked inputs and reconstructions to look at.
"""

from __future__ import annotations

import torch
from torch import nn
from lightly.models import utils as lightly_utils
from lightly.models.modules.masked_autoencoder import MAEDecoder
from lightly.models.modules.masked_vision_transformer_torchvision import MaskedVisionTransformerTorchvision

from cookbook import augment
from cookbook.methods.base import Method, register


def random_patch_mask(batch_size: int, num_patches: int, ratio: float,
                      generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which patches each image hides: ``round(ratio * num_patches)`` of them,
    chosen uniformly at random per image, with no Python loop.

    Returns ``(keep, masked)``: int64 ``(B, P - M)`` and ``(B, M)`` patch
    indices in ``[0, P)``, disjoint per row and together a permutation of it.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie strictly between 0 and 1, got {ratio}")
    n_masked = round(ratio * num_patches)
    if not 0 < n_masked < num_patches:
        raise ValueError(f"mask ratio {ratio} of {num_patches} patches masks {n_masked}: "
                         f"choose a ratio that hides at least one patch and keeps one")
    order = torch.rand(batch_size, num_patches, generator=generator, device=device).argsort(dim=1)
    return order[:, n_masked:], order[:, :n_masked]


def patch_targets(images: torch.Tensor, patch_size: int, norm_pix: bool) -> torch.Tensor:
    """Pixel targets ``(B, P, 3 p²)`` of every patch of ``images`` ``(B, 3, H, W)``,
    each patch normalised by its own mean and standard deviation if ``norm_pix``."""
    patches = lightly_utils.patchify(images, patch_size)
    if norm_pix:
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        patches = (patches - mean) / (var + 1e-6).sqrt()
    return patches


class MaskedImageModel(Method):
    """What MAE and SimMIM share: a ViT backbone, one view per image (the
    papers' random resized crop of 20-100 % and flip, no colour jitter),
    per-patch pixel targets, and a loss on the hidden patches only,
    ``distance(prediction, target)`` of what :meth:`reconstruct` returns. The
    embedding is the backbone's representation: there is no projector."""

    distance = staticmethod(nn.functional.mse_loss)

    def __init__(self, backbone: nn.Module, mask_ratio: float, norm_pix: bool):
        if not hasattr(backbone, "vit"):
            raise ValueError(f"{type(self).__name__} needs a ViT backbone (cookbook.models.vit_tiny); "
                             f"got {type(backbone).__name__}: use --backbone vit_tiny")
        super().__init__(backbone)
        random_patch_mask(1, backbone.vit.seq_length - 1, mask_ratio)  # validates the ratio
        self.patch_size, self.mask_ratio, self.norm_pix = backbone.vit.patch_size, mask_ratio, norm_pix
        # the backbone's ViT seen through lightly's masking wrapper (weights shared), with a mask token
        self.encoder = MaskedVisionTransformerTorchvision(vit=backbone.vit)
        self.embedding_dim = backbone.dim

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        raise NotImplementedError

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.Views([augment.ViewSpec(size=size, min_scale=0.2, cj_prob=0.0, random_gray_scale=0.0)])

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel targets ``(B, P, 3 p²)`` of every patch (normalised if ``norm_pix``)."""
        return patch_targets(images, self.patch_size, self.norm_pix)

    def loss(self, views):
        if len(views) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly 1 view, got {len(views)}; "
                             "use a one-view augmentation")
        prediction, target, _ = self.reconstruct(views[0])
        return self.distance(prediction, target)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


@register
class MAE(MaskedImageModel):
    """MAE (He et al., CVPR 2022): a ViT encoder that sees only the visible
    patches, and a small Transformer decoder that predicts the pixels of the
    masked ones. The loss is the mean squared error over masked patches only,

    ``L = 1/|M| Σ_{i∈M} ||x̂_i - t_i||² / (3 p²)``,

    where the target ``t_i`` is the patch's pixels, normalised by the patch's
    own mean and variance when ``norm_pix`` (the paper's better variant).

    Built on lightly's torchvision helpers (no timm): the encoder is the
    backbone's ``VisionTransformer`` seen through
    ``MaskedVisionTransformerTorchvision`` (weights shared, so
    :meth:`representation` is the trained encoder), the decoder is
    ``MAEDecoder``. Each step masks one random view per image; the method
    takes a one-view augmentation (crop and flip, no colour jitter, as the
    paper).

    Args:
        backbone: a :class:`cookbook.models.ViT`.
        mask_ratio: fraction of patches hidden (0.75 in the paper).
        decoder_dim, decoder_depth, decoder_heads: decoder size (512, 8, 16 in
            the paper for ViT-L; small models want a small decoder).
        norm_pix: normalise each target patch by its own mean and std.
    """

    name = "mae"

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix: bool = True):
        super().__init__(backbone, mask_ratio, norm_pix)
        vit = backbone.vit
        self.decoder = MAEDecoder(seq_length=vit.seq_length, num_layers=decoder_depth, num_heads=decoder_heads,
                                  embed_input_dim=vit.hidden_dim, hidden_dim=decoder_dim,
                                  mlp_dim=4 * decoder_dim, out_dim=3 * vit.patch_size**2)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        torch.nn.init.normal_(self.mask_token, std=0.02)

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Masks ``images`` ``(B, 3, H, W)`` in [0, 1] and predicts the hidden patches.

        Returns ``(prediction, target, masked)``: prediction and target ``(B, M, 3 p²)``
        for the ``M`` masked patches, and their patch indices ``(B, M)``.
        """
        b = len(images)
        n_patches = self.encoder.sequence_length - 1
        keep, masked = random_patch_mask(b, n_patches, self.mask_ratio, generator, images.device)
        cls = torch.zeros(b, 1, dtype=torch.long, device=images.device)
        keep_tokens, masked_tokens = torch.cat([cls, keep + 1], 1), masked + 1  # index 0: class token
        encoded = self.encoder.encode(self.backbone.normalize(images), idx_keep=keep_tokens)
        decoder_in = lightly_utils.repeat_token(self.mask_token, (b, self.encoder.sequence_length))
        decoder_in = lightly_utils.set_at_index(decoder_in, keep_tokens, self.decoder.embed(encoded))
        decoded = self.decoder.decode(decoder_in)
        prediction = self.decoder.predict(lightly_utils.get_at_index(decoded, masked_tokens))
        target = lightly_utils.get_at_index(self.targets(images), masked)
        return prediction, target, masked


@register
class SimMIM(MaskedImageModel):
    """SimMIM (Xie et al., CVPR 2022): the ViT encoder sees every patch, the
    masked ones replaced by one learnt mask token (their positions kept), and
    a linear head maps each masked patch's output token to its pixels. The
    loss is the mean absolute error over masked patches only,

    ``L = 1/|M| Σ_{i∈M} ||x̂_i - t_i||₁ / (3 p²)``,

    on raw pixels by default (the paper's choice; ``norm_pix`` normalises each
    target patch as MAE does). The paper masks 32 x 32-pixel blocks of 224-px
    images at ratio 0.6; at 16 px one patch is the block.

    Args:
        backbone: a :class:`cookbook.models.ViT`.
        mask_ratio: fraction of patches hidden (0.6 in the paper).
        norm_pix: normalise each target patch by its own mean and std.
    """

    name = "simmim"
    distance = staticmethod(nn.functional.l1_loss)

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.6, norm_pix: bool = False):
        super().__init__(backbone, mask_ratio, norm_pix)  # the encoder owns SimMIM's mask token
        self.head = nn.Linear(backbone.vit.hidden_dim, 3 * backbone.vit.patch_size**2)

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Masks ``images`` ``(B, 3, H, W)`` in [0, 1] and predicts the hidden patches.

        Returns ``(prediction, target, masked)`` as :meth:`MAE.reconstruct`.
        """
        n_patches = self.encoder.sequence_length - 1
        _, masked = random_patch_mask(len(images), n_patches, self.mask_ratio, generator, images.device)
        encoded = self.encoder.encode(self.backbone.normalize(images), idx_mask=masked + 1)  # 0: class token
        prediction = self.head(lightly_utils.get_at_index(encoded, masked + 1))
        target = lightly_utils.get_at_index(self.targets(images), masked)
        return prediction, target, masked


@torch.no_grad()
def reconstruction_images(method: MAE | SimMIM, images: torch.Tensor, seed: int = 0):
    """What a masked image model sees and what it rebuilds, as images to show.

    ``images``: float ``(B, 3, H, W)`` in [0, 1]. Returns ``(masked, rebuilt)``,
    both ``(B, 3, H, W)`` in [0, 1]: the input with its hidden patches grey,
    and the input with those patches replaced by the prediction. A prediction
    of normalised pixels (``norm_pix``) is mapped back with each hidden patch's
    own mean and standard deviation, as MAE's figures do: the colour and
    brightness of a hidden patch are then given, its content is predicted.
    """
    was_training = method.training
    method.eval()
    try:
        prediction, _, masked = method.reconstruct(images, torch.Generator(images.device).manual_seed(seed))
    finally:
        method.train(was_training)
    p = method.patch_size
    patches = lightly_utils.patchify(images, p)  # (B, P, 3 p²)
    hidden = lightly_utils.get_at_index(patches, masked)
    if method.norm_pix:
        mean, var = hidden.mean(-1, keepdim=True), hidden.var(-1, keepdim=True)
        prediction = prediction * (var + 1e-6).sqrt() + mean
    grey = lightly_utils.set_at_index(patches, masked, torch.full_like(hidden, 0.5))
    rebuilt = lightly_utils.set_at_index(patches, masked, prediction.clamp(0, 1))
    return (lightly_utils.unpatchify(grey, p).clamp(0, 1), lightly_utils.unpatchify(rebuilt, p).clamp(0, 1))
