"""The PyTorch peer of our training step: CLIP4Clip's meanP baseline on transformers' CLIP towers.

What a user of the CLIP4Clip lineage runs today, written here for `benchmarks/train_step.py`:
transformers' PyTorch `CLIPModel` towers, frame features L2-normalised, mean-pooled over valid
frames and normalised again (meanP), the text feature at the end-of-text token, symmetric InfoNCE
at temperature tau, AdamW with weight decay on weight matrices only, global-norm clipping. Ours at
the same setting is `configs/*` with `benchmark_overrides()` (cosine interaction, meanP, no
NegNCE, no TPM-CL). Both read the same weights (`save_hf` writes them where `tvr_jax.clip.load`
reads), so the first loss of the two on one batch must agree: `train_step.py` checks that.

Left out, as they cost no measurable time: the learning-rate schedule (a constant rate here) and
a learned logit scale (fixed at 1/tau, as our config does).
"""

from __future__ import annotations

import torch
import transformers

from tvr_jax.models.clip import CLIPConfig

_DECAYED = ("weight",)  # nn.Linear / conv weights; norms and embeddings are excluded by module type below


def hf_config(c: CLIPConfig) -> transformers.CLIPConfig:
    """transformers' config of the architecture `c` (CLIP's real token ids: 49406 start, 49407 end)."""
    return transformers.CLIPConfig(
        text_config={"vocab_size": c.vocab_size, "hidden_size": c.text_width, "intermediate_size": c.text_mlp_dim,
                         "num_hidden_layers": c.text_layers, "num_attention_heads": c.text_heads,
                         "max_position_embeddings": c.context_length, "hidden_act": c.activation,
                         "layer_norm_eps": c.layer_norm_eps, "bos_token_id": c.vocab_size - 2, "eos_token_id": c.vocab_size - 1,
                         "pad_token_id": 0},
        vision_config={"hidden_size": c.vision_width, "intermediate_size": c.vision_mlp_dim,
                           "num_hidden_layers": c.vision_layers, "num_attention_heads": c.vision_heads,
                           "image_size": c.image_size, "patch_size": c.patch_size, "hidden_act": c.activation,
                           "layer_norm_eps": c.layer_norm_eps},
        projection_dim=c.embed_dim,
    )


def random_clip(c: CLIPConfig, seed: int = 0) -> transformers.CLIPModel:
    """A randomly initialised CLIPModel of architecture `c` (float32, training mode)."""
    torch.manual_seed(seed)
    return transformers.CLIPModel(hf_config(c))


def save_hf(model: transformers.CLIPModel, folder: str) -> None:
    """Write the weights as an HF folder (safetensors) that `tvr_jax.clip.load(folder)` reads."""
    model.save_pretrained(folder)


class MeanPRetrieval(torch.nn.Module):
    """CLIP4Clip meanP: S = <t_eot, normalise(mean_valid_frames(normalise(f)))>; symmetric InfoNCE."""

    def __init__(self, clip: transformers.CLIPModel, temperature: float = 0.01):
        super().__init__()
        self.clip = clip
        self.temperature = temperature

    def encode_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        out = self.clip.text_model(input_ids=text_ids)  # causal mask only, as CLIP: padding after EOT is unseen
        return torch.nn.functional.normalize(self.clip.text_projection(out.pooler_output), dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        pixels = video.reshape(b * t, *video.shape[2:]).permute(0, 3, 1, 2)  # (BT, 3, H, W)
        frames = self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)
        frames = torch.nn.functional.normalize(frames, dim=-1).reshape(b, t, -1)
        weights = video_mask.float()
        pooled = (frames * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, video, video_mask, text_ids) -> torch.Tensor:
        sim = self.encode_text(text_ids) @ self.encode_video(video, video_mask).T / self.temperature
        labels = torch.arange(sim.shape[0])
        return 0.5 * (torch.nn.functional.cross_entropy(sim, labels) + torch.nn.functional.cross_entropy(sim.T, labels))


def make_optimizer(model: MeanPRetrieval, lr: float, weight_decay: float, betas=(0.9, 0.98), eps: float = 1e-6):
    """AdamW, decaying weight matrices (Linear, conv) only, as `tvr_jax.optim` does."""
    decayed, other = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_matrix = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name in _DECAYED
            (decayed if is_matrix else other).append(p)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def make_train_step(model: MeanPRetrieval, optimizer, clip_norm: float = 1.0):
    """step(video, video_mask, text_ids) -> loss (float): forward, backward, clip, AdamW."""

    def step(video, video_mask, text_ids) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(video, video_mask, text_ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        return float(loss.detach())

    return step
