"""The PyTorch peer of our training and evaluation: CLIP4Clip's meanP baseline on transformers' CLIP
towers, and DMAE scoring written the way the release computes it.

What a user of the CLIP4Clip lineage runs today, written here for `benchmarks/train_step.py`:
transformers' PyTorch `CLIPModel` towers, frame features L2-normalised, mean-pooled over valid
frames and normalised again (meanP), the text feature at the end-of-text token, symmetric InfoNCE
at temperature tau, AdamW with weight decay on weight matrices only, global-norm clipping. Ours at
the same setting is `configs/*` with `benchmark_overrides()` (cosine interaction, meanP, no
NegNCE, no TPM-CL). Both read the same weights (`save_hf` writes them where `tvr_jax.clip.load`
reads), so the first loss of the two on one batch must agree: `train_step.py` checks that.

For evaluation (`benchmarks/eval_step.py`): `frame_features` and `caption_features` are the
towers' token features as `RetrievalModel` returns them with the meanP temporal module, and
`dmae_similarity` scores texts against videos (docs/method.md 2, `att_ti`, visual and textual
attention) as the release and CLIP4Clip's evaluation loop do: blocks of texts against blocks of
videos, each block's full (texts, videos, tokens, frames) grid in eager PyTorch.

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
        frames = frame_features(self.clip, video)
        weights = video_mask.float()
        pooled = (frames * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, video, video_mask, text_ids) -> torch.Tensor:
        sim = self.encode_text(text_ids) @ self.encode_video(video, video_mask).T / self.temperature
        labels = torch.arange(sim.shape[0])
        return 0.5 * (torch.nn.functional.cross_entropy(sim, labels) + torch.nn.functional.cross_entropy(sim.T, labels))


def frame_features(clip: transformers.CLIPModel, video: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) frames -> (B, T, D) L2-normalised projected frame tokens."""
    b, t = video.shape[:2]
    pixels = video.reshape(b * t, *video.shape[2:]).permute(0, 3, 1, 2)  # (BT, 3, H, W)
    frames = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    return torch.nn.functional.normalize(frames, dim=-1).reshape(b, t, -1)


def caption_features(clip: transformers.CLIPModel, text_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """t_cls (B, D) at the end-of-text token, words (B, L, D) (every position), word_mask (B, L)
    (between the start and end tokens), all as `RetrievalModel.encode_text` returns them."""
    tokens = clip.text_projection(clip.text_model(input_ids=text_ids).last_hidden_state)
    tokens = torch.nn.functional.normalize(tokens, dim=-1)
    eot = text_ids.argmax(-1)  # the end-of-text id is the vocabulary's largest (OpenAI's rule)
    pos = torch.arange(text_ids.shape[1])
    word_mask = (text_ids > 0) & (pos > 0) & (pos < eot[:, None])
    return {"t_cls": tokens[torch.arange(len(eot)), eot], "words": tokens, "word_mask": word_mask}


def _set_similarity(x, x_mask, alpha, frames, frame_mask, beta, nn_idx, c_nn, gamma):
    """S(X_a, F_b) of docs/method.md 2.3 with visual attention (2.1): (A, n, D) tokens x (B, T, D) frames -> (A, B)."""
    s = torch.einsum("and,btd->abnt", x, frames)  # the full grid of the block
    s = s.masked_fill(~(x_mask[:, None, :, None] & frame_mask[None, :, None, :]), 0.0)
    v_star = s.masked_fill(~frame_mask[None, :, None, :], float("-inf")).argmax(-1)  # (A, B, n)
    t2v = s.gather(-1, v_star[..., None])[..., 0]
    b_idx = torch.arange(frames.shape[0])[None, :, None]
    v_2star = nn_idx[b_idx, v_star]
    t2v = t2v + gamma * c_nn[b_idx, v_star] * s.gather(-1, v_2star[..., None])[..., 0]
    t_star = s.masked_fill(~x_mask[:, None, :, None], float("-inf")).argmax(2)  # (A, B, T)
    v2t = s.gather(2, t_star[:, :, None, :])[:, :, 0, :]
    return 0.5 * ((alpha[:, None, :] * t2v).sum(-1) + (beta[None] * v2t).sum(-1))


@torch.inference_mode()
def dmae_similarity(text_cls, words, word_weights, word_mask, frames, frame_mask, gamma: float = 0.5,
                    text_block: int = 64, video_block: int = 64) -> torch.Tensor:
    """S (B_t, B_v), `att_ti` with visual and textual attention (docs/method.md 2), features L2-normalised.

    Texts and videos go in blocks, each (text block, video block) pair scored on its full token
    grid: how CLIP4Clip's evaluation loop (batches of texts x batches of videos) runs the release's
    `_get_wti_similarity`. Maxima run over valid tokens only, as docs/method.md chooses.
    """
    norm = lambda w: w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    alpha, beta = norm(word_weights * word_mask), norm(frame_mask.float())
    c = torch.einsum("bvd,bud->bvu", frames, frames)  # each video's frame-frame similarity (2.1)
    ok = frame_mask[:, :, None] & frame_mask[:, None, :] & ~torch.eye(frames.shape[1], dtype=torch.bool)
    nn_idx = c.masked_fill(~ok, float("-inf")).argmax(-1)
    c_nn = c.gather(-1, nn_idx[..., None])[..., 0].masked_fill(~ok.any(-1), 0.0)
    one = torch.ones(len(text_cls), 1)
    out = torch.empty(len(text_cls), len(frames))
    for i in range(0, len(text_cls), text_block):
        ti = slice(i, i + text_block)
        for j in range(0, len(frames), video_block):
            vj = slice(j, j + video_block)
            video = (frames[vj], frame_mask[vj], beta[vj], nn_idx[vj], c_nn[vj], gamma)
            sentence = _set_similarity(text_cls[ti, None], one[ti].bool(), one[ti], *video)
            out[ti, vj] = 0.5 * (sentence + _set_similarity(words[ti], word_mask[ti], alpha[ti], *video))
    return out


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
