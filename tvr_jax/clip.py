"""Public CLIP API: `load` a local checkpoint, `tokenize` captions, the Flax `CLIP` model.

    model, params = tvr_jax.clip.load("path/to/clip-vit-base-patch32")   # HF folder or OpenAI .pt
    ids, mask = tvr_jax.clip.tokenize(["a photo of a cat"], max_len=77)
    text = model.apply({"params": params}, ids, method=model.encode_text)      # (N, D)
    image = model.apply({"params": params}, images, method=model.encode_image)  # (N, D), NHWC
"""

from data_pipeline.tokenizer import ClipTokenizer, default_tokenizer, tokenize
from tvr_jax.models.clip import CLIP, PRESETS, CLIPConfig, end_of_text_index
from tvr_jax.models.clip_weights import CheckpointError, load, read_checkpoint, save_converted

# CLIP's image normalisation (docs/method.md section 1).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "CLIP", "CLIPConfig", "PRESETS", "CheckpointError", "ClipTokenizer", "IMAGE_MEAN", "IMAGE_STD",
    "default_tokenizer", "end_of_text_index", "load", "read_checkpoint", "save_converted", "tokenize",
]
