"""A multimodal language model over text and discrete image tokens (DDT-LLaMA in miniature).

- `vocab`: one LM vocabulary (text ids, task markers, image codes) and the text tokenizer;
- `sequences`: the five training tasks as token sequences with loss masks, and the generation prompts;
- `model`: the causal LM (transformers' Llama) with text-to-image, captioning and editing.
"""

from detok.multimodal import model  # noqa: F401  (registration: the mllm family and its members)
